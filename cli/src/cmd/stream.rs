//! `tidemark stream`: the speed layer as a long-running service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tidemark_core::EventTime;
use tidemark_core::ValidSpec;
use tidemark_core::spec::SourceSpec;
use tidemark_store::{DeadLetterStore, RawArchive};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{
    Clock, FileSource, ManualClock, ReceivedAt, Service, ServiceConfig, Sinks, Source, Stopped, SystemClock,
};

use crate::arrival::ArrivalClockSource;

/// Run the stream service: consume the spec's source, window events by event time, and commit
/// provisional results, source offsets and state to the serving store atomically.
///
/// On start it claims the pipeline's writer (an older instance still running is fenced off), restores
/// its state and resumes from the offsets committed last, so a crash at any moment loses and duplicates
/// nothing. SIGTERM or Ctrl-C: stop consuming, commit what was consumed, exit 0.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  tidemark stream --spec pipeline.toml\n  \
tidemark stream --spec replay.toml --finish        # file source: close all windows at the end, stop\n  \
curl -s localhost:9464/metrics | grep tidemark_consumed\n\n\
Logs go to stderr (RUST_LOG=debug for more; --log-format json for machines).")]
pub struct Args {
    /// The pipeline spec (TOML).
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Address of the HTTP endpoint serving /metrics (Prometheus) and /healthz; `off` disables it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    listen: String,
    /// Commit at least this often while anything is pending.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    flush_interval: std::time::Duration,
    /// Commit early once this many row changes are pending.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    flush_rows: usize,
    /// Pause the source while this many MiB of consumed records are not yet committed.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    max_in_flight_mib: usize,
    /// Flushes committing at once: with 2, the next flush appends to the raw archive while the previous
    /// one writes its rows (lower latency); 1 commits strictly one after the other.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    max_flushes_in_flight: u16,
    /// For a file source: at its end, close every window (final results), commit and exit.
    #[arg(long)]
    finish: bool,
    /// Do not create or migrate the store's tables first (e.g. when running as a least-privilege role
    /// after `tidemark store init`).
    #[arg(long)]
    no_init: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let spec = super::load_valid_spec(&args.spec)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args, spec))
}

/// tidemark at info, dependencies at warn; the Delta kernel logs an ERROR for every probe of a table that
/// does not exist yet (which the store then creates), so it is silenced, and deltalake's MERGE warns on
/// every merge that it derived a metric it reports (not a problem of the data), so it says errors only.
const DEFAULT_LOG_FILTER: &str = "warn,tidemark=info,tidemark_stream=info,tidemark_store=info,buoyant_kernel=off,\
                                  deltalake_core::operations::merge=error";

pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn serve(args: &Args, spec: ValidSpec) -> anyhow::Result<ExitCode> {
    let stores = &spec.spec().stores;
    let store = tidemark_store::open(&spec.serving_store()).await?;
    if !args.no_init {
        store.init().await?;
    }
    let sinks = Sinks {
        store: Arc::from(store),
        dead_letters: Arc::new(DeadLetterStore::open(&stores.dead_letter)?),
        archive: Some(Arc::new(RawArchive::open(stores.raw_archive.clone()).await?)),
    };
    let config = ServiceConfig {
        flush_interval: args.flush_interval,
        flush_rows: args.flush_rows,
        max_in_flight_bytes: args.max_in_flight_mib << 20,
        max_flushes_in_flight: usize::from(args.max_flushes_in_flight),
        finish_at_end: args.finish,
        ..ServiceConfig::default()
    };
    match &spec.spec().source {
        SourceSpec::File { path, received_at: None } => {
            let source = FileSource::new(path, ReceivedAt::Clock(Arc::new(SystemClock)));
            run_service(args, &spec, source, sinks, config, Arc::new(SystemClock)).await
        }
        SourceSpec::File { path, received_at: Some(field) } => {
            // a recorded stream: processing time follows the lines' arrival times (the clock starts at the
            // first line's; a line without the field arrives at the clock's current time)
            let clock = ManualClock::new(EventTime::UNIX_EPOCH);
            let received_at = ReceivedAt::Field { name: field.clone(), fallback: Arc::new(clock.clone()) };
            let source = ArrivalClockSource::new(FileSource::new(path, received_at), clock.clone(), None);
            run_service(args, &spec, source, sinks, config, Arc::new(clock)).await
        }
        SourceSpec::Kafka { .. } => {
            let source = tidemark_stream::KafkaConfig::from_spec(&spec.spec().source)?.build()?;
            run_service(args, &spec, source, sinks, config, Arc::new(SystemClock)).await
        }
    }
}

async fn run_service<S: Source>(
    args: &Args,
    spec: &ValidSpec,
    source: S,
    sinks: Sinks,
    config: ServiceConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = if args.listen == "off" {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        let shutdown = async move {
            let _ = http_stop_rx.await;
        };
        Some(tokio::spawn(tidemark_stream::http::serve(listener, metrics.clone(), shutdown)))
    };
    tokio::spawn(watch_signals(stop.clone()));

    let service = Service::start(spec, source, sinks, clock, config, metrics.clone()).await?;
    let result = service.run(stop).await;
    let _ = http_stop_tx.send(());
    if let Some(h) = http {
        let _ = h.await;
    }
    let summary = result?;
    let totals = summary.accounts.values().fold((0, 0, 0, 0, 0), |t, a| {
        (
            t.0 + a.consumed,
            t.1 + a.aggregated,
            t.2 + a.late_routed,
            t.3 + a.dead_lettered,
            t.4 + a.duplicates_suppressed,
        )
    });
    let suspects: u64 = summary.suspects.values().sum();
    eprintln!(
        "stream {}: {} flushes; since the pipeline began: consumed {} = aggregated {} + late {} + dead-lettered {} \
         + duplicates {}; {suspects} far-ahead events held back from the watermark (suspects)",
        match summary.stopped {
            Stopped::Shutdown => "stopped on signal",
            Stopped::EndOfInput => "reached the end of its input",
        },
        summary.flushes,
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        totals.4,
    );
    Ok(ExitCode::SUCCESS)
}

/// Sets `stop` on SIGTERM or SIGINT; a second signal exits at once.
async fn watch_signals(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; stop the service with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if stop.swap(true, Ordering::Relaxed) {
            tracing::warn!("second signal: exiting without a final commit (a restart resumes from the last one)");
            std::process::exit(130);
        }
        tracing::info!("signal received: committing what was consumed, then stopping");
    }
}
