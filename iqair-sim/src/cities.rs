//! The simulator's world: real cities with real coordinates, named the way the listing endpoints
//! name them, plus synthetic grid cells for points far from any of them.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// A built-in city. `base_aqi` and `mean_temp` give each place its own character (Delhi is not
/// Reykjavik); the hourly values vary around them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct City {
    pub name: &'static str,
    pub state: &'static str,
    pub country: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub base_aqi: f64,
    pub mean_temp: f64,
}

/// Where IP-mode `nearest_city` (no `lat`/`lon`) lands: the simulator cannot geolocate loopback.
pub(crate) const IP_MODE_CITY: usize = 0;

/// A point farther than this from every built-in city gets a synthetic grid cell, so data still
/// differs by place (benchmarks use thousands of points).
const NEAREST_CITY_RADIUS_KM: f64 = 100.0;

/// The built-in cities, from `cities.csv` (compiled in).
pub(crate) static CITIES: LazyLock<Vec<City>> = LazyLock::new(|| {
    parse_cities(include_str!("cities.csv"))
        // The file is part of the build; `the_city_table_parses` checks it.
        .unwrap_or_else(|line| panic!("cities.csv line {line} does not parse"))
});

/// `name|state|country|lat|lon|base_aqi|mean_temp` lines (`#` comments and blank lines
/// skipped); on a bad line, its number.
fn parse_cities(text: &'static str) -> Result<Vec<City>, usize> {
    let mut cities = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&'static str> = line.split('|').collect();
        let [name, state, country, lat, lon, base_aqi, mean_temp] = fields[..] else {
            return Err(n + 1);
        };
        let number = |text: &str| text.parse::<f64>().map_err(|_| n + 1);
        cities.push(City {
            lat: number(lat)?,
            lon: number(lon)?,
            base_aqi: number(base_aqi)?,
            mean_temp: number(mean_temp)?,
            name,
            state,
            country,
        });
    }
    Ok(cities)
}

/// A place a reading is made for: a built-in city or a synthetic grid cell.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub city: Cow<'static, str>,
    pub state: &'static str,
    pub country: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub base_aqi: f64,
    pub mean_temp: f64,
    /// Seeds every value of this place's readings.
    pub seed: u64,
}

impl Place {
    fn from_city(city: &City) -> Place {
        Place {
            city: Cow::Borrowed(city.name),
            state: city.state,
            country: city.country,
            lat: city.lat,
            lon: city.lon,
            base_aqi: city.base_aqi,
            mean_temp: city.mean_temp,
            seed: fnv1a(&[city.name, city.state, city.country]),
        }
    }
}

/// The place of the IP-mode `nearest_city`.
pub(crate) fn ip_mode_place() -> Place {
    Place::from_city(&CITIES[IP_MODE_CITY])
}

/// The exact `city`/`state`/`country` combination, names compared as sent (IQAIR.md §8.9).
pub(crate) fn find_city(name: &str, state: &str, country: &str) -> Option<Place> {
    CITIES
        .iter()
        .find(|c| c.name == name && c.state == state && c.country == country)
        .map(Place::from_city)
}

/// The nearest built-in city within reach, else a synthetic 0.1° grid cell around the point.
/// The caller has checked that the coordinates are finite and in range.
pub(crate) fn nearest(lat: f64, lon: f64) -> Place {
    let closest = CITIES
        .iter()
        .map(|c| (distance_km(lat, lon, c.lat, c.lon), c))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((km, city)) if km <= NEAREST_CITY_RADIUS_KM => Place::from_city(city),
        _ => grid_cell(lat, lon),
    }
}

fn grid_cell(lat: f64, lon: f64) -> Place {
    // Adding 0.0 turns -0.0 into 0.0, so the equator does not print as "-0.0".
    let cell_lat = (lat * 10.0).round() / 10.0 + 0.0;
    let cell_lon = (lon * 10.0).round() / 10.0 + 0.0;
    let ns = if cell_lat < 0.0 { 'S' } else { 'N' };
    let ew = if cell_lon < 0.0 { 'W' } else { 'E' };
    let name = format!("Grid {:.1}{ns} {:.1}{ew}", cell_lat.abs(), cell_lon.abs());
    let seed = fnv1a(&[&name]);
    // Warmer towards the equator; the pollution base comes from the seed (10..160).
    let mean_temp = 28.0 - 0.45 * cell_lat.abs();
    let base_aqi = 10.0 + (seed % 150) as f64;
    Place {
        city: Cow::Owned(name),
        state: "Grid",
        country: "Simulated",
        lat: cell_lat,
        lon: cell_lon,
        base_aqi,
        mean_temp,
        seed,
    }
}

/// Every country, sorted.
pub(crate) fn countries() -> Vec<&'static str> {
    let set: BTreeSet<&'static str> = CITIES.iter().map(|c| c.country).collect();
    set.into_iter().collect()
}

/// The states of `country`, sorted; `None` for an unknown country.
pub(crate) fn states(country: &str) -> Option<Vec<&'static str>> {
    let set: BTreeSet<&'static str> = CITIES
        .iter()
        .filter(|c| c.country == country)
        .map(|c| c.state)
        .collect();
    (!set.is_empty()).then(|| set.into_iter().collect())
}

/// The cities of `state` in `country`, sorted; `None` for an unknown state.
pub(crate) fn cities(state: &str, country: &str) -> Option<Vec<&'static str>> {
    let set: BTreeSet<&'static str> = CITIES
        .iter()
        .filter(|c| c.country == country && c.state == state)
        .map(|c| c.name)
        .collect();
    (!set.is_empty()).then(|| set.into_iter().collect())
}

/// True when `country` is one the simulator knows.
pub(crate) fn is_country(country: &str) -> bool {
    CITIES.iter().any(|c| c.country == country)
}

fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_table_parses() {
        let cities = parse_cities(include_str!("cities.csv")).expect("cities.csv parses");
        assert_eq!(cities.len(), 88);
        assert_eq!(cities[IP_MODE_CITY].name, "Los Angeles");
        assert!(cities
            .iter()
            .all(|c| c.lat.abs() <= 90.0 && c.lon.abs() <= 180.0));
        assert_eq!(
            parse_cities("a|b|c|1|2|3").err(),
            Some(1),
            "a missing field"
        );
        assert_eq!(
            parse_cities("# x\na|b|c|1|2|x|4").err(),
            Some(2),
            "a bad number"
        );
    }

    #[test]
    fn nearest_finds_real_cities_and_synthesises_the_rest() {
        assert_eq!(nearest(52.52, 13.40).city, "Berlin");
        assert_eq!(nearest(52.3, 13.1).city, "Berlin");
        assert_eq!(nearest(34.07, -118.24).city, "Los Angeles");
        assert_eq!(nearest(-33.87, 151.21).city, "Sydney");
        let gulf = nearest(0.0, 0.0);
        assert_eq!(gulf.city, "Grid 0.0N 0.0E");
        assert_eq!((gulf.state, gulf.country), ("Grid", "Simulated"));
        let south = nearest(-0.04, -30.26);
        assert_eq!(south.city, "Grid 0.0N 30.3W");
        assert_ne!(nearest(10.0, -30.0).seed, nearest(10.0, -31.0).seed);
        assert_eq!(nearest(10.01, -30.01).city, nearest(9.99, -29.99).city);
    }

    #[test]
    fn city_names_are_unique_and_listings_agree() {
        let mut seen = BTreeSet::new();
        for c in CITIES.iter() {
            assert!(seen.insert((c.name, c.state, c.country)), "{}", c.name);
            assert!((-90.0..=90.0).contains(&c.lat) && (-180.0..=180.0).contains(&c.lon));
            assert!(find_city(c.name, c.state, c.country).is_some());
            assert!(states(c.country).is_some_and(|s| s.contains(&c.state)));
            assert!(cities(c.state, c.country).is_some_and(|s| s.contains(&c.name)));
        }
        assert!(CITIES.len() >= 30);
        assert!(countries().contains(&"USA"));
        assert!(states("Atlantis").is_none());
        assert!(cities("Texas", "Germany").is_none());
        assert!(find_city("berlin", "Berlin", "Germany").is_none());
    }
}
