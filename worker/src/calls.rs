//! Answering the supervisor's calls (`worker:start`, `worker:stop`) in the original reply shape
//! (`{success, message}`), on the scheduler. The link only carries them.

use protocol::{Call, Refused, Reply, Schedule, StreamConfig};

use crate::scheduler::{Scheduler, Started, Stopped};

/// Answer a call in the original reply shape.
pub fn handle_call(scheduler: &Scheduler, call: Call) -> Reply {
    match call {
        Call::Start(config) => {
            let adapter = config.adapter.clone();
            match start(scheduler, config, true) {
                Ok(()) => Reply::ok(format!("Started fetching from adapter {adapter}.")),
                Err(refused) => Reply::err(refused.message),
            }
        }
        Call::StartMany(configs) => {
            let total = configs.len();
            let refused: Vec<Refused> = configs
                .into_iter()
                .filter_map(|config| start(scheduler, config, false).err())
                .collect();
            let started = total - refused.len();
            tracing::info!(
                started,
                refused = refused.len(),
                "streams started in one call"
            );
            Reply {
                success: refused.is_empty(),
                message: format!("Started {started} of {total} streams."),
                refused,
            }
        }
        Call::Stop {
            stream_id,
            generation,
        } => match scheduler.stop(stream_id, generation) {
            Stopped::Stopped => {
                tracing::info!(%stream_id, "stream stopped");
                Reply::ok(format!("Stopped stream {stream_id}."))
            }
            Stopped::NotRunning => Reply::ok(format!("Stream {stream_id} was not running.")),
            Stopped::NewerGenerationRunning => Reply::ok(format!(
                "Stream {stream_id} runs under a newer assignment; left running."
            )),
        },
    }
}

/// Starts one stream; `log_each` logs a started stream (a batch logs once instead).
fn start(scheduler: &Scheduler, config: StreamConfig, log_each: bool) -> Result<(), Refused> {
    let adapter = config.adapter.clone();
    let stream_id = config.stream_id;
    let generation = config.generation;
    let every = match &config.schedule {
        Schedule::Interval { millis } => format!("every {millis} ms"),
        Schedule::Cron { expr } => format!("on cron {expr:?}"),
    };
    match scheduler.start(config) {
        Ok(started) => {
            if log_each && started != Started::Unchanged {
                tracing::info!(%stream_id, %adapter, ?started, "stream started {every}");
            }
            Ok(())
        }
        Err(err) => Err(Refused {
            stream_id,
            generation,
            message: format!("Cannot start stream {stream_id}: {err}."),
        }),
    }
}
