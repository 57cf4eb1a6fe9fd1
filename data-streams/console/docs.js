"use strict";
// Swagger UI on the document this server generates; same-origin requests carry the console's
// session cookie, and the "Authorize" button takes the bearer token.
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger",
    deepLinking: true,
    requestInterceptor: (request) => {
      const csrf = sessionStorage.getItem("ds-csrf");
      if (csrf) request.headers["X-CSRF-Token"] = csrf;
      return request;
    },
  });
});
