//! Answering the supervisor's calls (`worker:start`, `worker:stop`) in the original reply shape
//! (`{success, message}`), on the scheduler. The link only carries them.

use protocol::{Call, Reply, Schedule};

use crate::scheduler::{Scheduler, Started, Stopped};

/// Answer a call in the original reply shape.
pub fn handle_call(scheduler: &Scheduler, call: Call) -> Reply {
    match call {
        Call::Start(config) => {
            let adapter = config.adapter.clone();
            let stream_id = config.stream_id;
            let every = match &config.schedule {
                Schedule::Interval { millis } => format!("every {millis} ms"),
                Schedule::Cron { expr } => format!("on cron {expr:?}"),
            };
            match scheduler.start(config) {
                Ok(started) => {
                    if started != Started::Unchanged {
                        tracing::info!(%stream_id, %adapter, ?started, "stream started {every}");
                    }
                    Reply::ok(format!("Started fetching from adapter {adapter}."))
                }
                Err(err) => Reply::err(format!("Cannot start stream {stream_id}: {err}.")),
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
