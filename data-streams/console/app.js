"use strict";
document.getElementById("main").textContent = "The console is being built.";
