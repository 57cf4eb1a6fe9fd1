//! Asynchronous report jobs: submit, poll the status until `success`, then page the result.
//! A job's status is a function of its age (queued for the first half of the job delay,
//! processing for the second) and of the mode it was submitted under (normal, fail, stuck).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How many jobs are remembered (the oldest are forgotten first).
const JOBS_KEPT: usize = 10_000;

/// How the next submitted jobs end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobMode {
    /// `success` after the job delay.
    Normal,
    /// `failed` after the job delay.
    Fail,
    /// `processing` for ever.
    Stuck,
}

impl FromStr for JobMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "normal" => Ok(JobMode::Normal),
            "fail" => Ok(JobMode::Fail),
            "stuck" => Ok(JobMode::Stuck),
            other => Err(format!(
                "unknown job mode {other:?}; known: normal, fail, stuck"
            )),
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Success,
    Failed,
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone)]
struct Job {
    submitted: Instant,
    delay: Duration,
    mode: JobMode,
    /// The item ids the result holds.
    ids: Range<u64>,
}

impl Job {
    fn status(&self, now: Instant) -> JobStatus {
        let age = now.saturating_duration_since(self.submitted);
        if age < self.delay / 2 {
            return JobStatus::Queued;
        }
        match self.mode {
            _ if age < self.delay => JobStatus::Processing,
            JobMode::Normal => JobStatus::Success,
            JobMode::Fail => JobStatus::Failed,
            JobMode::Stuck => JobStatus::Processing,
        }
    }
}

/// The mode the next jobs get, and for how many of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModeRule {
    pub mode: JobMode,
    /// Jobs left before the mode goes back to `normal`; `None` until reset.
    pub remaining: Option<u64>,
}

impl Default for ModeRule {
    fn default() -> Self {
        ModeRule {
            mode: JobMode::Normal,
            remaining: None,
        }
    }
}

#[derive(Debug, Default)]
struct Board {
    jobs: HashMap<String, Job>,
    order: VecDeque<String>,
    rule: ModeRule,
}

/// Every job submitted (the last [`JOBS_KEPT`]) and the mode rule.
#[derive(Debug, Default)]
pub(crate) struct JobBoard {
    board: Mutex<Board>,
}

impl JobBoard {
    fn lock(&self) -> MutexGuard<'_, Board> {
        // Each change is a few inserts and removes that cannot panic half way.
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Submits a job over `ids` that takes `delay`; returns its id.
    pub fn submit(&self, ids: Range<u64>, delay: Duration) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut board = self.lock();
        let mode = board.rule.mode;
        if let Some(remaining) = board.rule.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                board.rule = ModeRule::default();
            }
        }
        if board.order.len() >= JOBS_KEPT {
            if let Some(oldest) = board.order.pop_front() {
                board.jobs.remove(&oldest);
            }
        }
        board.order.push_back(id.clone());
        let job = Job {
            submitted: Instant::now(),
            delay,
            mode,
            ids,
        };
        board.jobs.insert(id.clone(), job);
        id
    }

    /// A job's status and the ids of its result, if the job is known.
    pub fn get(&self, id: &str) -> Option<(JobStatus, Range<u64>)> {
        let board = self.lock();
        let job = board.jobs.get(id)?;
        Some((job.status(Instant::now()), job.ids.clone()))
    }

    /// Sets the mode of the next `count` jobs (`None`: until reset).
    pub fn set_mode(&self, rule: ModeRule) {
        self.lock().rule = rule;
    }

    pub fn mode(&self) -> ModeRule {
        self.lock().rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_job_goes_queued_processing_success() {
        let board = JobBoard::default();
        let id = board.submit(3..7, Duration::from_millis(1000));
        assert_eq!(board.get(&id), Some((JobStatus::Queued, 3..7)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(board.get(&id).map(|j| j.0), Some(JobStatus::Processing));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(board.get(&id).map(|j| j.0), Some(JobStatus::Success));
        assert_eq!(board.get("unknown"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn modes_apply_to_the_next_jobs_then_lapse() {
        let board = JobBoard::default();
        board.set_mode(ModeRule {
            mode: JobMode::Fail,
            remaining: Some(1),
        });
        let failing = board.submit(0..1, Duration::ZERO);
        let normal = board.submit(0..1, Duration::ZERO);
        board.set_mode(ModeRule {
            mode: JobMode::Stuck,
            remaining: None,
        });
        let stuck = board.submit(0..1, Duration::from_millis(10));
        let also_stuck = board.submit(0..1, Duration::from_millis(10));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(board.get(&failing).map(|j| j.0), Some(JobStatus::Failed));
        assert_eq!(board.get(&normal).map(|j| j.0), Some(JobStatus::Success));
        assert_eq!(board.get(&stuck).map(|j| j.0), Some(JobStatus::Processing));
        assert_eq!(
            board.get(&also_stuck).map(|j| j.0),
            Some(JobStatus::Processing)
        );
        assert_eq!(board.mode().mode, JobMode::Stuck);
        assert!("sometimes"
            .parse::<JobMode>()
            .unwrap_err()
            .contains("normal, fail, stuck"));
    }
}
