//! The web console and the API viewer, served from the binary: `GET /` (the console, a page
//! that talks to the API like any client), `GET /docs` (Swagger UI on `/openapi.json`), and
//! `GET /assets/…` (their scripts and styles, and the vendored libraries listed in
//! `assets/vendor/README.md`). The console's scripts are ES modules (`app.js` imports the
//! others), each listed in [`ASSETS`]. Nothing is fetched from elsewhere, at build or at run time.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A file served from the binary.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// Vendored files never change under their name; the console's own do, with the binary.
    immutable: bool,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

static ASSETS: &[Asset] = &[
    Asset {
        path: "app.js",
        content_type: JS,
        bytes: include_bytes!("../console/app.js"),
        immutable: false,
    },
    Asset {
        path: "api.js",
        content_type: JS,
        bytes: include_bytes!("../console/api.js"),
        immutable: false,
    },
    Asset {
        path: "ui.js",
        content_type: JS,
        bytes: include_bytes!("../console/ui.js"),
        immutable: false,
    },
    Asset {
        path: "live.js",
        content_type: JS,
        bytes: include_bytes!("../console/live.js"),
        immutable: false,
    },
    Asset {
        path: "aqi.js",
        content_type: JS,
        bytes: include_bytes!("../console/aqi.js"),
        immutable: false,
    },
    Asset {
        path: "stream-form.js",
        content_type: JS,
        bytes: include_bytes!("../console/stream-form.js"),
        immutable: false,
    },
    Asset {
        path: "page-streams.js",
        content_type: JS,
        bytes: include_bytes!("../console/page-streams.js"),
        immutable: false,
    },
    Asset {
        path: "coverage.js",
        content_type: JS,
        bytes: include_bytes!("../console/coverage.js"),
        immutable: false,
    },
    Asset {
        path: "page-stream.js",
        content_type: JS,
        bytes: include_bytes!("../console/page-stream.js"),
        immutable: false,
    },
    Asset {
        path: "page-workers.js",
        content_type: JS,
        bytes: include_bytes!("../console/page-workers.js"),
        immutable: false,
    },
    Asset {
        path: "page-reports.js",
        content_type: JS,
        bytes: include_bytes!("../console/page-reports.js"),
        immutable: false,
    },
    Asset {
        path: "page-warehouse.js",
        content_type: JS,
        bytes: include_bytes!("../console/page-warehouse.js"),
        immutable: false,
    },
    Asset {
        path: "app.css",
        content_type: CSS,
        bytes: include_bytes!("../console/app.css"),
        immutable: false,
    },
    Asset {
        path: "docs.js",
        content_type: JS,
        bytes: include_bytes!("../console/docs.js"),
        immutable: false,
    },
    Asset {
        path: "vendor/uplot/uPlot.iife.min.js",
        content_type: JS,
        bytes: include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
        immutable: true,
    },
    Asset {
        path: "vendor/uplot/uPlot.min.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
        immutable: true,
    },
    Asset {
        path: "vendor/swagger-ui/swagger-ui-bundle.js",
        content_type: JS,
        bytes: include_bytes!("../assets/vendor/swagger-ui/swagger-ui-bundle.js"),
        immutable: true,
    },
    Asset {
        path: "vendor/swagger-ui/swagger-ui.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/vendor/swagger-ui/swagger-ui.css"),
        immutable: true,
    },
];

/// What every page and asset is sent with: scripts and styles from this origin only (the
/// console has no inline script), no framing, no sniffing, no referrer.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn page(html: &'static [u8]) -> Response {
    secured(
        (
            [
                (header::CONTENT_TYPE, HTML),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            html,
        )
            .into_response(),
    )
}

/// `GET /`: the console.
pub async fn index() -> Response {
    page(include_bytes!("../console/index.html"))
}

/// `GET /docs`: Swagger UI on `/openapi.json`.
pub async fn docs() -> Response {
    page(include_bytes!("../console/docs.html"))
}

/// `GET /assets/{path}`.
pub async fn asset(Path(path): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let cache = if asset.immutable {
        "public, max-age=604800"
    } else {
        "no-cache"
    };
    secured(
        (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, cache),
            ],
            asset.bytes,
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_unknown_ones_are_not() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
            let response = asset(Path(a.path.to_owned())).await;
            assert_eq!(response.status(), StatusCode::OK, "{}", a.path);
            assert_eq!(response.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(response
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY));
        }
        let missing = asset(Path("../Cargo.toml".to_owned())).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    /// Every script and style in `console/` is served, and every module a script imports
    /// (`from "./x.js"`) is one of them: a file left out of [`ASSETS`] would break the console
    /// only in a browser.
    #[test]
    fn every_console_file_and_import_is_an_asset() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let served = |name: &str| ASSETS.iter().any(|a| a.path == name);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".js") || name.ends_with(".css") {
                assert!(served(&name), "console/{name} is not in ASSETS");
            }
        }
        for a in ASSETS
            .iter()
            .filter(|a| a.content_type == JS && !a.immutable)
        {
            let text = std::str::from_utf8(a.bytes).unwrap();
            for import in text.split("from \"./").skip(1) {
                let name = import.split('"').next().unwrap();
                assert!(
                    served(name),
                    "{} imports ./{name}, which is not in ASSETS",
                    a.path
                );
            }
        }
        let index = std::str::from_utf8(include_bytes!("../console/index.html")).unwrap();
        for script in index.split("<script").skip(1) {
            let src = script
                .split("src=\"/assets/")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("no inline script: the CSP forbids it");
            assert!(
                served(src),
                "index.html loads /assets/{src}, which is not in ASSETS"
            );
        }
    }
}
