//! The simulator's world: real cities with real coordinates, named the way the listing endpoints
//! name them, plus synthetic grid cells for points far from any of them.

use std::borrow::Cow;
use std::collections::BTreeSet;

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

const fn city(
    name: &'static str,
    state: &'static str,
    country: &'static str,
    lat: f64,
    lon: f64,
    base_aqi: f64,
    mean_temp: f64,
) -> City {
    City {
        name,
        state,
        country,
        lat,
        lon,
        base_aqi,
        mean_temp,
    }
}

/// Where IP-mode `nearest_city` (no `lat`/`lon`) lands: the simulator cannot geolocate loopback.
pub(crate) const IP_MODE_CITY: usize = 0;

/// A point farther than this from every built-in city gets a synthetic grid cell, so data still
/// differs by place (benchmarks use thousands of points).
const NEAREST_CITY_RADIUS_KM: f64 = 100.0;

pub(crate) static CITIES: &[City] = &[
    city(
        "Los Angeles",
        "California",
        "USA",
        34.0522,
        -118.2437,
        55.0,
        18.0,
    ),
    city(
        "New York City",
        "New York",
        "USA",
        40.7128,
        -74.0060,
        40.0,
        13.0,
    ),
    city("Chicago", "Illinois", "USA", 41.8781, -87.6298, 45.0, 10.0),
    city("Houston", "Texas", "USA", 29.7604, -95.3698, 50.0, 21.0),
    city("Denver", "Colorado", "USA", 39.7392, -104.9903, 45.0, 10.0),
    city(
        "Seattle",
        "Washington",
        "USA",
        47.6062,
        -122.3321,
        30.0,
        11.0,
    ),
    city("Miami", "Florida", "USA", 25.7617, -80.1918, 35.0, 25.0),
    city("Anchorage", "Alaska", "USA", 61.2181, -149.9003, 15.0, 3.0),
    city("Honolulu", "Hawaii", "USA", 21.3069, -157.8583, 20.0, 25.0),
    city("Toronto", "Ontario", "Canada", 43.6532, -79.3832, 30.0, 9.0),
    city(
        "Vancouver",
        "British Columbia",
        "Canada",
        49.2827,
        -123.1207,
        25.0,
        11.0,
    ),
    city("Montreal", "Quebec", "Canada", 45.5017, -73.5673, 30.0, 7.0),
    city(
        "Mexico City",
        "Mexico City",
        "Mexico",
        19.4326,
        -99.1332,
        85.0,
        17.0,
    ),
    city("Bogota", "Bogota", "Colombia", 4.7110, -74.0721, 60.0, 14.0),
    city("Lima", "Lima", "Peru", -12.0464, -77.0428, 75.0, 19.0),
    city(
        "Santiago",
        "Santiago Metropolitan",
        "Chile",
        -33.4489,
        -70.6693,
        70.0,
        15.0,
    ),
    city(
        "Sao Paulo",
        "Sao Paulo",
        "Brazil",
        -23.5505,
        -46.6333,
        55.0,
        20.0,
    ),
    city(
        "Buenos Aires",
        "Buenos Aires",
        "Argentina",
        -34.6037,
        -58.3816,
        40.0,
        18.0,
    ),
    city(
        "London",
        "England",
        "United Kingdom",
        51.5074,
        -0.1278,
        35.0,
        11.0,
    ),
    city(
        "Paris",
        "Ile-de-France",
        "France",
        48.8566,
        2.3522,
        40.0,
        12.0,
    ),
    city("Berlin", "Berlin", "Germany", 52.5200, 13.4050, 35.0, 10.0),
    city("Munich", "Bavaria", "Germany", 48.1351, 11.5820, 30.0, 9.0),
    city("Madrid", "Madrid", "Spain", 40.4168, -3.7038, 40.0, 15.0),
    city("Rome", "Lazio", "Italy", 41.9028, 12.4964, 45.0, 16.0),
    city("Milan", "Lombardy", "Italy", 45.4642, 9.1900, 65.0, 13.0),
    city(
        "Amsterdam",
        "North Holland",
        "Netherlands",
        52.3676,
        4.9041,
        35.0,
        10.0,
    ),
    city(
        "Zurich",
        "Zurich",
        "Switzerland",
        47.3769,
        8.5417,
        25.0,
        9.0,
    ),
    city("Vienna", "Vienna", "Austria", 48.2082, 16.3738, 35.0, 11.0),
    city("Warsaw", "Mazovia", "Poland", 52.2297, 21.0122, 50.0, 8.0),
    city(
        "Krakow",
        "Lesser Poland Voivodeship",
        "Poland",
        50.0647,
        19.9450,
        70.0,
        8.0,
    ),
    city(
        "Stockholm",
        "Stockholm",
        "Sweden",
        59.3293,
        18.0686,
        20.0,
        7.0,
    ),
    city("Oslo", "Oslo", "Norway", 59.9139, 10.7522, 20.0, 6.0),
    city(
        "Reykjavik",
        "Capital Region",
        "Iceland",
        64.1466,
        -21.9426,
        12.0,
        5.0,
    ),
    city("Athens", "Attica", "Greece", 37.9838, 23.7275, 45.0, 18.0),
    city(
        "Istanbul", "Istanbul", "Turkey", 41.0082, 28.9784, 60.0, 14.0,
    ),
    city("Moscow", "Moscow", "Russia", 55.7558, 37.6173, 45.0, 6.0),
    city("Kyiv", "Kyiv", "Ukraine", 50.4501, 30.5234, 45.0, 8.0),
    city("Cairo", "Cairo", "Egypt", 30.0444, 31.2357, 140.0, 22.0),
    city("Lagos", "Lagos", "Nigeria", 6.5244, 3.3792, 110.0, 27.0),
    city("Nairobi", "Nairobi", "Kenya", -1.2921, 36.8219, 55.0, 18.0),
    city(
        "Johannesburg",
        "Gauteng",
        "South Africa",
        -26.2041,
        28.0473,
        70.0,
        16.0,
    ),
    city(
        "Cape Town",
        "Western Cape",
        "South Africa",
        -33.9249,
        18.4241,
        35.0,
        17.0,
    ),
    city(
        "Dubai",
        "Dubai",
        "United Arab Emirates",
        25.2048,
        55.2708,
        110.0,
        28.0,
    ),
    city("Tehran", "Tehran", "Iran", 35.6892, 51.3890, 110.0, 17.0),
    city("Delhi", "Delhi", "India", 28.7041, 77.1025, 170.0, 25.0),
    city(
        "Mumbai",
        "Maharashtra",
        "India",
        19.0760,
        72.8777,
        130.0,
        27.0,
    ),
    city(
        "Kolkata",
        "West Bengal",
        "India",
        22.5726,
        88.3639,
        150.0,
        27.0,
    ),
    city(
        "Bengaluru",
        "Karnataka",
        "India",
        12.9716,
        77.5946,
        90.0,
        24.0,
    ),
    city(
        "Lahore", "Punjab", "Pakistan", 31.5204, 74.3587, 180.0, 24.0,
    ),
    city(
        "Karachi", "Sindh", "Pakistan", 24.8607, 67.0011, 130.0, 26.0,
    ),
    city(
        "Dhaka",
        "Dhaka",
        "Bangladesh",
        23.8103,
        90.4125,
        170.0,
        26.0,
    ),
    city(
        "Kathmandu",
        "Central Region",
        "Nepal",
        27.7172,
        85.3240,
        140.0,
        19.0,
    ),
    city(
        "Bangkok", "Bangkok", "Thailand", 13.7563, 100.5018, 95.0, 29.0,
    ),
    city(
        "Chiang Mai",
        "Chiang Mai",
        "Thailand",
        18.7883,
        98.9853,
        100.0,
        26.0,
    ),
    city("Hanoi", "Hanoi", "Vietnam", 21.0278, 105.8342, 140.0, 24.0),
    city(
        "Ho Chi Minh City",
        "Ho Chi Minh City",
        "Vietnam",
        10.8231,
        106.6297,
        90.0,
        28.0,
    ),
    city(
        "Jakarta",
        "Jakarta",
        "Indonesia",
        -6.2088,
        106.8456,
        130.0,
        28.0,
    ),
    city(
        "Singapore",
        "Singapore",
        "Singapore",
        1.3521,
        103.8198,
        45.0,
        28.0,
    ),
    city(
        "Kuala Lumpur",
        "Kuala Lumpur",
        "Malaysia",
        3.1390,
        101.6869,
        60.0,
        28.0,
    ),
    city(
        "Manila",
        "National Capital Region",
        "Philippines",
        14.5995,
        120.9842,
        70.0,
        28.0,
    ),
    city(
        "Beijing", "Beijing", "China", 39.9042, 116.4074, 110.0, 13.0,
    ),
    city(
        "Shanghai", "Shanghai", "China", 31.2304, 121.4737, 80.0, 17.0,
    ),
    city(
        "Guangzhou",
        "Guangdong",
        "China",
        23.1291,
        113.2644,
        75.0,
        22.0,
    ),
    city(
        "Chengdu", "Sichuan", "China", 30.5728, 104.0668, 100.0, 16.0,
    ),
    city(
        "Hong Kong",
        "Hong Kong",
        "Hong Kong SAR",
        22.3193,
        114.1694,
        55.0,
        23.0,
    ),
    city(
        "Seoul",
        "Seoul",
        "South Korea",
        37.5665,
        126.9780,
        75.0,
        13.0,
    ),
    city("Tokyo", "Tokyo", "Japan", 35.6762, 139.6503, 40.0, 16.0),
    city("Osaka", "Osaka", "Japan", 34.6937, 135.5023, 45.0, 17.0),
    city(
        "Ulaanbaatar",
        "Ulaanbaatar",
        "Mongolia",
        47.8864,
        106.9057,
        130.0,
        -1.0,
    ),
    city(
        "Sydney",
        "New South Wales",
        "Australia",
        -33.8688,
        151.2093,
        25.0,
        18.0,
    ),
    city(
        "Melbourne",
        "Victoria",
        "Australia",
        -37.8136,
        144.9631,
        25.0,
        15.0,
    ),
    city(
        "Perth",
        "Western Australia",
        "Australia",
        -31.9505,
        115.8605,
        20.0,
        19.0,
    ),
    city(
        "Auckland",
        "Auckland",
        "New Zealand",
        -36.8485,
        174.7633,
        15.0,
        15.0,
    ),
];

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
        for c in CITIES {
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
