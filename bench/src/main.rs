//! `ds-bench`: the benchmarks of scripts/bench.sh. Each part runs everything it compares in the
//! same run and prints one line per figure, `<system> <metric> <value>`, then one `ratio` line
//! per goal. No figure is asserted: the exit status is non-zero only when a run fails.

mod ingest;
mod live;
mod pages;
mod pipeline;
mod procs;
mod protocol_bench;
mod report;
mod scale;
mod supervisor;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Protocol,
    Pipeline,
    Scale,
    Live,
    Pages,
    Ingest,
    Supervisor,
    All,
}

#[derive(Debug, Parser)]
#[command(about = "data-streams benchmarks (see BENCHMARKS.md)")]
struct Args {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    part: Part,
    /// Directory holding the release binaries (data-streams, worker, iqair-sim, json-sim,
    /// s3-test-server).
    #[arg(long, env = "BENCH_BIN_DIR", default_value = "target/release")]
    bin_dir: std::path::PathBuf,
    /// Shorter runs (smaller counts) for a quick check of the harness itself.
    #[arg(long, env = "BENCH_QUICK")]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = procs::Context::new(args.bin_dir.clone(), args.quick)?;
    let parts = match args.part {
        Part::All => vec![
            Part::Protocol,
            Part::Pipeline,
            Part::Scale,
            Part::Live,
            Part::Pages,
            Part::Ingest,
            Part::Supervisor,
        ],
        one => vec![one],
    };
    let outcome = parts.into_iter().try_for_each(|part| match part {
        Part::Protocol => protocol_bench::run(&ctx),
        Part::Pipeline => pipeline::run(&ctx),
        Part::Scale => scale::run(&ctx),
        Part::Live => live::run(&ctx),
        Part::Pages => pages::run(&ctx),
        Part::Ingest => ingest::run(&ctx),
        Part::Supervisor => supervisor::run(&ctx),
        Part::All => unreachable!("expanded above"),
    });
    if outcome.is_err() || std::env::var_os("BENCH_KEEP_LOGS").is_some() {
        // Keep the logs of a failed run for a look.
        let kept = ctx.work.keep();
        report::note(format!("logs kept under {}", kept.display()));
    }
    outcome
}
