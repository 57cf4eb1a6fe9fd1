//! Hourly readings: a deterministic function of the place and the UTC hour, serialised in the
//! Community-plan shape of IQAIR.md §3 (pollution first most hours, weather first some hours;
//! `ws` sometimes an integer, sometimes a float; `weather.ts` now and then an hour behind).

use std::f64::consts::TAU;
use std::fmt;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::cities::Place;

/// Which optional parts a reading carries (the `missing_*` faults drop them, IQAIR.md §8.3-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub pollution: bool,
    pub main_pollutants: bool,
}

impl Shape {
    pub const FULL: Shape = Shape {
        pollution: true,
        main_pollutants: true,
    };
}

/// The success body of `city`/`nearest_city` for `place` at UTC hour `hour` (hours since the
/// Unix epoch).
pub(crate) fn city_body(place: &Place, hour: i64, shape: Shape) -> Vec<u8> {
    let data = city_data(place, hour, shape);
    // Serialising plain structs of numbers and strings into a Vec cannot fail.
    serde_json::to_vec(&Envelope {
        status: "success",
        data,
    })
    .unwrap_or_default()
}

/// A listing body: `{"status":"success","data":[{"<field>": name}, ...]}`.
pub(crate) fn listing_body(field: &'static str, names: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        status: "success",
        data: Listing { field, names },
    })
    .unwrap_or_default()
}

/// A fail body: `{"status":"fail","data":{"message": message}}`.
pub(crate) fn fail_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        status: "fail",
        data: FailData { message },
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct Envelope<T> {
    status: &'static str,
    data: T,
}

#[derive(Serialize)]
struct FailData<'a> {
    message: &'a str,
}

struct Listing<'a> {
    field: &'static str,
    names: &'a [&'a str],
}

impl Serialize for Listing<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct One<'a>(&'static str, &'a str);
        impl Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(self.0, self.1)?;
                map.end()
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.names.len()))?;
        for name in self.names {
            seq.serialize_element(&One(self.field, name))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct CityData<'a> {
    city: &'a str,
    state: &'a str,
    country: &'a str,
    location: Location,
    current: Current,
}

#[derive(Serialize)]
struct Location {
    #[serde(rename = "type")]
    kind: &'static str,
    /// GeoJSON order: `[lon, lat]`.
    coordinates: [f64; 2],
}

struct Current {
    pollution: Option<Pollution>,
    weather: Weather,
    pollution_first: bool,
}

impl Serialize for Current {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if !self.pollution_first {
            map.serialize_entry("weather", &self.weather)?;
        }
        if let Some(pollution) = &self.pollution {
            map.serialize_entry("pollution", pollution)?;
        }
        if self.pollution_first {
            map.serialize_entry("weather", &self.weather)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Pollution {
    ts: HourTs,
    aqius: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    mainus: Option<&'static str>,
    aqicn: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    maincn: Option<&'static str>,
}

#[derive(Serialize)]
struct Weather {
    ts: HourTs,
    ic: &'static str,
    hu: u32,
    pr: u32,
    tp: i32,
    wd: u32,
    ws: WindSpeed,
    #[serde(rename = "heatIndex")]
    heat_index: i32,
}

/// The API sends `ws` as `2` one hour and `4.54` the next (IQAIR.md §8.7).
enum WindSpeed {
    Whole(u32),
    Decimal(f64),
}

impl Serialize for WindSpeed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            WindSpeed::Whole(n) => serializer.serialize_u32(n),
            WindSpeed::Decimal(x) => serializer.serialize_f64(x),
        }
    }
}

/// The start of a UTC hour, printed as `YYYY-MM-DDTHH:00:00.000Z`.
#[derive(Clone, Copy)]
struct HourTs(i64);

impl fmt::Display for HourTs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(24);
        let hour = self.0.rem_euclid(24);
        let (year, month, day) = civil_from_days(days);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:00:00.000Z")
    }
}

impl Serialize for HourTs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A uniform value in [0, 1) from the place, an hour and a salt (splitmix64).
fn unit(seed: u64, hour: i64, salt: u64) -> f64 {
    let mut x = seed ^ (hour as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.rotate_left(32);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn city_data(place: &Place, hour: i64, shape: Shape) -> CityData<'_> {
    let seed = place.seed;
    // Some hours the station has not published yet, so pollution lags by an hour; some hours
    // the weather does. Both stay a function of (place, hour), so repeated calls agree.
    let pollution_hour = hour - i64::from(unit(seed, hour, 1) < 0.2);
    let weather_hour = hour - i64::from(unit(seed, hour, 2) < 0.3);
    let pollution = shape
        .pollution
        .then(|| pollution_at(place, pollution_hour, shape.main_pollutants));
    CityData {
        city: &place.city,
        state: place.state,
        country: place.country,
        location: Location {
            kind: "Point",
            coordinates: [place.lon, place.lat],
        },
        current: Current {
            pollution,
            weather: weather_at(place, weather_hour),
            pollution_first: unit(seed, hour, 3) >= 0.25,
        },
    }
}

fn local_hour(place: &Place, hour: i64) -> f64 {
    (hour as f64 + place.lon / 15.0).rem_euclid(24.0)
}

fn pollution_at(place: &Place, hour: i64, main_pollutants: bool) -> Pollution {
    let seed = place.seed;
    let day = hour.div_euclid(24);
    // A day-to-day swing, a rush-hour bump and hourly noise around the place's base.
    let daily = 0.6 + 0.8 * unit(seed, day, 10);
    let diurnal = 1.0 + 0.25 * (TAU * (local_hour(place, hour) - 8.0) / 24.0).cos();
    let noise = 0.85 + 0.3 * unit(seed, hour, 11);
    let aqius = (place.base_aqi * daily * diurnal * noise)
        .round()
        .clamp(1.0, 500.0);
    // The China scale reads lower than the US one for the same particles.
    let aqicn = (aqius * (0.5 + 0.3 * unit(seed, hour, 12)))
        .round()
        .max(1.0);
    let pick = unit(seed, hour, 13);
    let mainus = if aqius < 40.0 && pick < 0.5 {
        "o3"
    } else if pick < 0.75 {
        "p2"
    } else if pick < 0.9 {
        "p1"
    } else if pick < 0.96 {
        "n2"
    } else {
        "o3"
    };
    // `maincn` may differ from `mainus` (IQAIR.md §3.2).
    let maincn = if unit(seed, hour, 14) < 0.7 {
        mainus
    } else if mainus == "p2" {
        "p1"
    } else {
        "p2"
    };
    Pollution {
        ts: HourTs(hour),
        aqius: aqius as u32,
        mainus: main_pollutants.then_some(mainus),
        aqicn: aqicn as u32,
        maincn: main_pollutants.then_some(maincn),
    }
}

fn weather_at(place: &Place, hour: i64) -> Weather {
    let seed = place.seed;
    let local = local_hour(place, hour);
    let day_of_year = (hour.div_euclid(24).rem_euclid(365)) as f64;
    // Seasons swing more away from the equator and flip across it; days peak mid-afternoon.
    let amplitude = (0.3 * place.lat.abs()).min(15.0);
    let season = -amplitude * place.lat.signum() * (TAU * (day_of_year - 15.0) / 365.25).cos();
    let diurnal = 4.0 * (TAU * (local - 15.0) / 24.0).cos();
    let tp = place.mean_temp + season + diurnal + 4.0 * (unit(seed, hour, 20) - 0.5);
    let hu = (75.0 - 1.5 * diurnal * 3.0 + 30.0 * (unit(seed, hour, 21) - 0.5)).clamp(8.0, 100.0);
    let pr = 1013.0 + 30.0 * (unit(seed, hour.div_euclid(6), 22) - 0.5);
    let raw_ws = 8.0 * unit(seed, hour, 23).powi(2);
    let ws = if unit(seed, hour, 24) < 0.4 {
        WindSpeed::Whole(raw_ws.round() as u32)
    } else {
        WindSpeed::Decimal((raw_ws * 100.0).round() / 100.0)
    };
    let wd = (360.0 * unit(seed, hour, 25)) as u32 % 360;
    let daytime = (6.0..18.0).contains(&local);
    let code = if tp <= 0.5 && hu > 80.0 {
        "13"
    } else if hu > 92.0 {
        "10"
    } else if hu > 82.0 {
        "04"
    } else if hu > 70.0 {
        "03"
    } else if hu > 55.0 {
        "02"
    } else {
        "01"
    };
    let ic = icon(code, daytime);
    let tp = tp.round();
    let hu = hu.round();
    Weather {
        ts: HourTs(hour),
        ic,
        hu: hu as u32,
        pr: pr.round() as u32,
        tp: tp as i32,
        wd,
        ws,
        heat_index: heat_index(tp, hu).round() as i32,
    }
}

fn icon(code: &str, daytime: bool) -> &'static str {
    match (code, daytime) {
        ("13", true) => "13d",
        ("13", false) => "13n",
        ("10", true) => "10d",
        ("10", false) => "10n",
        ("04", true) => "04d",
        ("04", false) => "04n",
        ("03", true) => "03d",
        ("03", false) => "03n",
        ("02", true) => "02d",
        ("02", false) => "02n",
        (_, true) => "01d",
        (_, false) => "01n",
    }
}

/// NOAA heat index (Rothfusz regression) in °C; below ~27 °C it is the temperature itself.
fn heat_index(tp: f64, hu: f64) -> f64 {
    if tp < 27.0 || hu < 40.0 {
        return tp;
    }
    let t = tp * 9.0 / 5.0 + 32.0;
    let r = hu;
    let f = -42.379 + 2.049_015_23 * t + 10.143_331_27 * r
        - 0.224_755_41 * t * r
        - 0.006_837_83 * t * t
        - 0.054_817_17 * r * r
        + 0.001_228_74 * t * t * r
        + 0.000_852_82 * t * r * r
        - 0.000_001_99 * t * t * r * r;
    (f - 32.0) * 5.0 / 9.0
}

#[cfg(test)]
mod tests {
    use super::super::cities;
    use super::*;
    use serde_json::Value;

    #[test]
    fn timestamps_are_on_the_hour_in_the_documented_format() {
        assert_eq!(HourTs(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T13:00Z: a leap day.
        assert_eq!(HourTs(474_781).to_string(), "2024-02-29T13:00:00.000Z");
        assert_eq!(HourTs(-1).to_string(), "1969-12-31T23:00:00.000Z");
        let hour = 492_000;
        let expected = chrono::DateTime::from_timestamp(hour * 3600, 0)
            .map(|t| t.format("%Y-%m-%dT%H:00:00.000Z").to_string());
        assert_eq!(Some(HourTs(hour).to_string()), expected);
    }

    #[test]
    fn a_reading_has_the_community_shape_and_is_stable_within_the_hour() {
        let place = cities::nearest(52.52, 13.40);
        let hour = 495_000;
        let body = city_body(&place, hour, Shape::FULL);
        assert_eq!(body, city_body(&place, hour, Shape::FULL));
        let v: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(v["status"], "success");
        let d = &v["data"];
        assert_eq!(d["city"], "Berlin");
        assert_eq!(d["location"]["type"], "Point");
        assert_eq!(d["location"]["coordinates"][0], 13.405);
        assert_eq!(d["location"]["coordinates"][1], 52.52);
        let p = &d["current"]["pollution"];
        for field in ["aqius", "aqicn"] {
            assert!(p[field].as_u64().is_some_and(|n| (1..=500).contains(&n)));
        }
        assert!(p["mainus"].is_string() && p["maincn"].is_string());
        let w = &d["current"]["weather"];
        for field in ["tp", "pr", "hu", "wd", "heatIndex"] {
            assert!(w[field].is_number(), "{field}");
        }
        assert!(w["ws"].is_number() && w["ic"].is_string());
        assert!(p["ts"]
            .as_str()
            .is_some_and(|ts| ts.ends_with(":00:00.000Z")));
    }

    #[test]
    fn readings_differ_by_place_and_hour_and_vary_in_form() {
        let berlin = cities::nearest(52.52, 13.40);
        let delhi = cities::nearest(28.70, 77.10);
        let hour = 495_000;
        assert_ne!(
            city_body(&berlin, hour, Shape::FULL),
            city_body(&delhi, hour, Shape::FULL)
        );
        let mut integer_ws = 0;
        let mut weather_first = 0;
        let mut ts_apart = 0;
        for h in hour..hour + 200 {
            let body = city_body(&berlin, h, Shape::FULL);
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            let current = &v["data"]["current"];
            integer_ws += usize::from(current["weather"]["ws"].is_u64());
            // serde_json::Value sorts keys, so look at the raw text for the order.
            let text = String::from_utf8_lossy(&body);
            weather_first += usize::from(text.contains(r#""current":{"weather""#));
            ts_apart += usize::from(current["weather"]["ts"] != current["pollution"]["ts"]);
        }
        assert!((20..180).contains(&integer_ws), "{integer_ws}");
        assert!((10..190).contains(&weather_first), "{weather_first}");
        assert!((10..190).contains(&ts_apart), "{ts_apart}");
    }

    #[test]
    fn shapes_drop_what_the_faults_ask_for() {
        let place = cities::ip_mode_place();
        let no_pollution = Shape {
            pollution: false,
            main_pollutants: true,
        };
        let v: Value =
            serde_json::from_slice(&city_body(&place, 1000, no_pollution)).expect("JSON");
        assert!(v["data"]["current"].get("pollution").is_none());
        assert!(v["data"]["current"]["weather"].is_object());
        let no_main = Shape {
            pollution: true,
            main_pollutants: false,
        };
        let v: Value = serde_json::from_slice(&city_body(&place, 1000, no_main)).expect("JSON");
        let p = &v["data"]["current"]["pollution"];
        assert!(p.get("mainus").is_none() && p.get("maincn").is_none());
        assert!(p["aqius"].is_number());
    }

    #[test]
    fn listing_and_fail_bodies() {
        assert_eq!(
            listing_body("country", &["Chile", "USA"]),
            br#"{"status":"success","data":[{"country":"Chile"},{"country":"USA"}]}"#
        );
        assert_eq!(
            fail_body("city_not_found"),
            br#"{"status":"fail","data":{"message":"city_not_found"}}"#
        );
    }
}
