//! `thriftctl`: the command-line client of thriftworker's admin API.
//!
//! ```text
//! thriftctl services list
//! thriftctl listeners add echo2 --address 127.0.0.1:9092 --service Echo
//! thriftctl stats --watch
//! ```
#![forbid(unsafe_code)]

mod cli;
mod client;
mod model;
mod table;
mod yaml;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde::Serialize;
use thriftworker_proto::admin::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

use cli::{
    Cli, Command, ConfigCmd, DrainArgs, EventsArgs, HealthArgs, ListenerAddArgs, ListenerState,
    ListenerTarget, ListenersCmd, LogLevelArgs, Output, ProtocolArg, ServiceArgs, ServicesCmd,
    StatsArgs, TransportArg, WorkerState, WorkersCmd,
};
use client::Conn;

/// Why thriftctl stops: a message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// A failed call or connection: exit status 1.
    pub fn error(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// A command line that cannot work (bad flag values, unreadable files): 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 2,
        }
    }

    /// Exit status 1 with nothing more to say (e.g. health printed NOT_SERVING).
    fn silent() -> Failure {
        Failure {
            message: String::new(),
            code: 1,
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("thriftctl: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("thriftctl: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

/// Writes to stdout; a closed pipe (`thriftctl ... | head`) ends quietly.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::silent()),
        Err(e) => Err(Failure::error(format!("cannot write to stdout: {e}"))),
    }
}

/// Prints `value` as pretty JSON or as the table `render` makes of it.
/// The next message of a server stream; `None` once Ctrl-C is pressed. The
/// stream ending or failing is an error naming `what`.
async fn next_message<T>(
    stream: &mut tonic::Streaming<T>,
    ctrl_c: std::pin::Pin<&mut impl std::future::Future>,
    what: &str,
    conn: &Conn,
) -> Result<Option<T>> {
    let next = tokio::select! {
        _ = ctrl_c => return Ok(None),
        next = stream.message() => next,
    };
    match next {
        Ok(Some(m)) => Ok(Some(m)),
        Ok(None) => Err(Failure::error(format!(
            "{what}: the server ended the stream (is it draining?)"
        ))),
        Err(status) => Err(Failure::error(client::status_line(
            what, &conn.peer, &status,
        ))),
    }
}

/// One YAML document of a stream (`---` first).
fn yaml_document<T: Serialize>(value: &T) -> Result<String> {
    let v = serde_json::to_value(value)
        .map_err(|e| Failure::error(format!("cannot encode YAML: {e}")))?;
    Ok(format!("---\n{}", yaml::to_string(&v)))
}

fn show<T: Serialize>(output: Output, value: &T, render: impl FnOnce(&T) -> String) -> Result<()> {
    match output {
        Output::Json => {
            let mut text = serde_json::to_string_pretty(value)
                .map_err(|e| Failure::error(format!("cannot encode JSON: {e}")))?;
            text.push('\n');
            emit(&text)
        }
        Output::Yaml => {
            let v = serde_json::to_value(value)
                .map_err(|e| Failure::error(format!("cannot encode YAML: {e}")))?;
            emit(&yaml::to_string(&v))
        }
        Output::Table | Output::Wide => emit(&render(value)),
    }
}

/// A list: `wide` renders the `-o wide` table.
fn show_list<T: Serialize>(
    output: Output,
    value: &T,
    narrow: impl FnOnce(&T) -> String,
    wide: impl FnOnce(&T) -> String,
) -> Result<()> {
    match output {
        Output::Wide => emit(&wide(value)),
        _ => show(output, value, narrow),
    }
}

/// Shows a list once, or, with `--watch`, again every interval until
/// Ctrl-C (a terminal is redrawn; JSON is one object per line, YAML one
/// document per list). `$fetch` is an expression giving the list.
macro_rules! list_maybe_watching {
    ($output:expr, $watch:expr, $fetch:expr, $narrow:expr, $wide:expr) => {{
        let (output, watch): (Output, &cli::WatchArgs) = ($output, $watch);
        if !watch.watch {
            let list = $fetch;
            return show_list(output, &list, $narrow, $wide);
        }
        let terminal = std::io::stdout().is_terminal();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let every = Duration::from_millis(watch.interval.max(100));
        loop {
            let list = $fetch;
            match output {
                Output::Json => {
                    let mut line = serde_json::to_string(&list)
                        .map_err(|e| Failure::error(format!("cannot encode JSON: {e}")))?;
                    line.push('\n');
                    emit(&line)?;
                }
                Output::Yaml => emit(&yaml_document(&list)?)?,
                Output::Table | Output::Wide => {
                    let text = if output == Output::Wide {
                        ($wide)(&list)
                    } else {
                        ($narrow)(&list)
                    };
                    if terminal {
                        emit(&format!(
                            "\x1b[H\x1b[2J{text}\n(every {}, Ctrl-C to stop)\n",
                            table::ms(watch.interval)
                        ))?;
                    } else {
                        emit(&format!("{text}\n"))?;
                    }
                }
            }
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                _ = tokio::time::sleep(every) => {}
            }
        }
    }};
}

async fn run(cli: Cli) -> Result<()> {
    let output = cli.global.output;
    table::set_no_headers(cli.global.no_headers);
    if let Command::Completions(args) = &cli.command {
        let mut buf = Vec::new();
        clap_complete::generate(args.shell, &mut Cli::command(), "thriftctl", &mut buf);
        return emit(&String::from_utf8_lossy(&buf));
    }
    let conn = Conn::open(&cli.global, cli.request_timeout).await?;
    match cli.command {
        Command::Services(cmd) => services(&conn, output, cmd).await,
        Command::Listeners(cmd) => listeners(&conn, output, cmd).await,
        Command::Workers(cmd) => workers(&conn, output, cmd).await,
        Command::Stats(args) => stats(&conn, output, args).await,
        Command::Drain(args) => drain(&conn, output, args).await,
        Command::LogLevel(args) => log_level(&conn, output, args).await,
        Command::Events(args) => events(&conn, output, args).await,
        Command::Config(ConfigCmd::Dump) => config_dump(&conn, output).await,
        Command::Health(args) => health(&conn, output, args).await,
        Command::Completions(_) => unreachable!("handled above"),
    }
}

// -- services -------------------------------------------------------------------

fn service_settings(a: &cli::ServiceSettingsArgs) -> pb::ServiceSettings {
    pb::ServiceSettings {
        timeout_ms: a.timeout.unwrap_or(0),
        method_timeouts_ms: a.method_timeouts.iter().cloned().collect(),
        clear_method_timeouts: a.clear_method_timeouts,
        queue_timeout_ms: a.queue_timeout.unwrap_or(0),
        max_queue: a.max_queue.unwrap_or(0),
        strip_service_prefix: if a.no_strip_prefix {
            Some(false)
        } else if a.strip_prefix {
            Some(true)
        } else {
            None
        },
    }
}

async fn services(conn: &Conn, output: Output, cmd: ServicesCmd) -> Result<()> {
    let mut admin = conn.admin();
    let t = conn.timeout;
    match cmd {
        ServicesCmd::List { watch } => list_maybe_watching!(
            output,
            &watch,
            {
                let resp = conn
                    .call(
                        "services list",
                        t,
                        admin.list_services(conn.request(pb::ListServicesRequest {})),
                    )
                    .await?;
                model::ServiceList {
                    services: resp.services.iter().map(Into::into).collect(),
                }
            },
            |l: &model::ServiceList| model::services_table(&l.services),
            |l: &model::ServiceList| model::services_table_wide(&l.services)
        ),
        ServicesCmd::Get { name } => {
            let what = format!("services get {name}");
            let s = conn
                .call(
                    &what,
                    t,
                    admin.get_service(conn.request(pb::GetServiceRequest { name })),
                )
                .await?;
            show(output, &model::Service::from(&s), model::service_detail)
        }
        ServicesCmd::Register(ServiceArgs { name, settings }) => {
            let what = format!("services register {name}");
            let req = pb::RegisterServiceRequest {
                name,
                settings: Some(service_settings(&settings)),
            };
            let s = conn
                .call(&what, t, admin.register_service(conn.request(req)))
                .await?;
            show(output, &model::Service::from(&s), model::service_detail)
        }
        ServicesCmd::Update(ServiceArgs { name, settings }) => {
            let what = format!("services update {name}");
            let req = pb::UpdateServiceRequest {
                name,
                settings: Some(service_settings(&settings)),
            };
            let s = conn
                .call(&what, t, admin.update_service(conn.request(req)))
                .await?;
            show(output, &model::Service::from(&s), model::service_detail)
        }
        ServicesCmd::Unregister { name } => {
            let what = format!("services unregister {name}");
            let req = pb::UnregisterServiceRequest { name: name.clone() };
            conn.call(&what, t, admin.unregister_service(conn.request(req)))
                .await?;
            show(output, &model::Empty {}, |_| {
                format!("service '{name}' unregistered; its calls in flight finish\n")
            })
        }
    }
}

// -- listeners ------------------------------------------------------------------

fn listener_settings(a: &ListenerAddArgs) -> pb::ListenerSettings {
    pb::ListenerSettings {
        address: a.address.clone(),
        services: a.services.clone(),
        default_service: a.default_service.clone().unwrap_or_default(),
        protocol: match a.protocol {
            ProtocolArg::Auto => pb::Protocol::Auto,
            ProtocolArg::Binary => pb::Protocol::Binary,
            ProtocolArg::Compact => pb::Protocol::Compact,
        } as i32,
        transport: match a.transport {
            TransportArg::Auto => pb::Transport::Auto,
            TransportArg::Framed => pb::Transport::Framed,
            TransportArg::Unframed => pb::Transport::Unframed,
            TransportArg::Header => pb::Transport::Header,
        } as i32,
        tls_cert: path_arg(&a.listener_cert),
        tls_key: path_arg(&a.listener_key),
        tls_client_ca: path_arg(&a.listener_client_ca),
        max_frame_size: a.max_frame_size.unwrap_or(0),
        max_connections: a.max_connections.unwrap_or(0),
        idle_timeout_ms: a.idle_timeout.unwrap_or(0),
        max_pipeline: a.max_pipeline.unwrap_or(0),
        paused: a.paused,
    }
}

/// A path for the server (empty: none). The server reads it: absolute
/// paths avoid surprises with its working directory.
fn path_arg(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Calls that wait for a drain get its length on top of the request timeout.
fn longer(conn: &Conn, extra_ms: Option<u64>, default_extra: Duration) -> Duration {
    conn.timeout + extra_ms.map(Duration::from_millis).unwrap_or(default_extra)
}

fn listener_list(resp: &pb::ListListenersResponse) -> model::ListenerList {
    model::ListenerList {
        listeners: resp.listeners.iter().map(Into::into).collect(),
    }
}

async fn listeners(conn: &Conn, output: Output, cmd: ListenersCmd) -> Result<()> {
    let mut admin = conn.admin();
    let t = conn.timeout;
    let cmd_is_drain = matches!(cmd, ListenersCmd::Drain(_));
    match cmd {
        ListenersCmd::List { state, watch } => list_maybe_watching!(
            output,
            &watch,
            {
                let resp = conn
                    .call(
                        "listeners list",
                        t,
                        admin.list_listeners(conn.request(pb::ListListenersRequest {})),
                    )
                    .await?;
                let mut list = listener_list(&resp);
                if let Some(state) = state {
                    list.listeners
                        .retain(|l| l.paused == (state == ListenerState::Paused));
                }
                list
            },
            |l: &model::ListenerList| model::listeners_table(&l.listeners),
            |l: &model::ListenerList| model::listeners_table_wide(&l.listeners)
        ),
        ListenersCmd::Get { name } => {
            let what = format!("listeners get {name}");
            let resp = conn
                .call(
                    &what,
                    t,
                    admin.list_listeners(conn.request(pb::ListListenersRequest {})),
                )
                .await?;
            let Some(found) = listener_list(&resp)
                .listeners
                .into_iter()
                .find(|l| l.name == name)
            else {
                return Err(Failure::error(format!(
                    "{what}: NOT_FOUND: no listener '{name}': see `thriftctl listeners list`"
                )));
            };
            show(output, &found, model::listener_detail)
        }
        ListenersCmd::Add(args) => {
            let what = format!("listeners add {}", args.name);
            let req = pb::AddListenerRequest {
                name: args.name.clone(),
                settings: Some(listener_settings(&args)),
            };
            let l = conn
                .call(&what, t, admin.add_listener(conn.request(req)))
                .await?;
            show(output, &model::Listener::from(&l), model::listener_detail)
        }
        ListenersCmd::Remove {
            name,
            drain_timeout,
        } => {
            let what = format!("listeners remove {name}");
            let timeout = longer(conn, drain_timeout, Duration::from_secs(30));
            let req = pb::RemoveListenerRequest {
                name: name.clone(),
                drain_timeout_ms: drain_timeout.unwrap_or(0),
            };
            conn.call(
                &what,
                timeout,
                admin.remove_listener(conn.request_with_timeout(req, timeout)),
            )
            .await?;
            show(output, &model::Empty {}, |_| {
                format!("listener '{name}' removed\n")
            })
        }
        ListenersCmd::Pause(target) | ListenersCmd::Drain(target) => {
            let drain = cmd_is_drain;
            let what = target_what(
                if drain {
                    "listeners drain"
                } else {
                    "listeners pause"
                },
                &target,
            );
            let req = pb::PauseListenersRequest {
                name: target.name.unwrap_or_default(),
                all: target.all,
                drain_connections: drain,
            };
            let resp = conn
                .call(&what, t, admin.pause_listeners(conn.request(req)))
                .await?;
            show(output, &listener_list(&resp), |l| {
                model::listeners_table(&l.listeners)
            })
        }
        ListenersCmd::Resume(target) => {
            let what = target_what("listeners resume", &target);
            let req = pb::ResumeListenersRequest {
                name: target.name.unwrap_or_default(),
                all: target.all,
            };
            let resp = conn
                .call(&what, t, admin.resume_listeners(conn.request(req)))
                .await?;
            show(output, &listener_list(&resp), |l| {
                model::listeners_table(&l.listeners)
            })
        }
    }
}

fn target_what(verb: &str, t: &ListenerTarget) -> String {
    match &t.name {
        Some(name) => format!("{verb} {name}"),
        None => format!("{verb} --all"),
    }
}

// -- workers --------------------------------------------------------------------

async fn workers(conn: &Conn, output: Output, cmd: WorkersCmd) -> Result<()> {
    let mut admin = conn.admin();
    let t = conn.timeout;
    match cmd {
        WorkersCmd::List {
            service,
            state,
            watch,
        } => list_maybe_watching!(
            output,
            &watch,
            {
                let req = pb::ListWorkersRequest {
                    service: service.clone().unwrap_or_default(),
                };
                let resp = conn
                    .call("workers list", t, admin.list_workers(conn.request(req)))
                    .await?;
                let mut list = model::WorkerList {
                    workers: resp.workers.iter().map(Into::into).collect(),
                };
                if let Some(state) = state {
                    list.workers
                        .retain(|w| w.leaving == (state == WorkerState::Leaving));
                }
                list
            },
            |l: &model::WorkerList| model::workers_table(&l.workers),
            |l: &model::WorkerList| model::workers_table(&l.workers)
        ),
        WorkersCmd::Get { id } => {
            let what = format!("workers get {id}");
            let req = pb::ListWorkersRequest::default();
            let resp = conn
                .call(&what, t, admin.list_workers(conn.request(req)))
                .await?;
            let Some(found) = resp
                .workers
                .iter()
                .map(model::Worker::from)
                .find(|w| w.id == id)
            else {
                return Err(Failure::error(format!(
                    "{what}: NOT_FOUND: no worker '{id}': see `thriftctl workers list`"
                )));
            };
            show(output, &found, model::worker_detail)
        }
        WorkersCmd::Drain { id } => {
            let what = format!("workers drain {id}");
            let req = pb::DrainWorkerRequest { id: id.clone() };
            let resp = conn
                .call(&what, t, admin.drain_worker(conn.request(req)))
                .await?;
            let shown = model::DrainedWorker {
                id: id.clone(),
                in_flight: resp.in_flight,
            };
            show(output, &shown, |d| {
                format!(
                    "worker {} draining: no new calls; it leaves once its {} call(s) in flight are answered\n",
                    d.id, d.in_flight
                )
            })
        }
        WorkersCmd::Evict { id } => {
            let what = format!("workers evict {id}");
            let req = pb::EvictWorkerRequest { id: id.clone() };
            conn.call(&what, t, admin.evict_worker(conn.request(req)))
                .await?;
            show(output, &model::Empty {}, |_| {
                format!("worker {id} evicted; its calls in flight were answered \"worker died\"\n")
            })
        }
    }
}

// -- stats ----------------------------------------------------------------------

async fn stats(conn: &Conn, output: Output, args: StatsArgs) -> Result<()> {
    let mut admin = conn.admin();
    let filter = pb::GetStatsRequest {
        services: args.services,
        listeners: args.listeners,
    };
    if !args.watch {
        let s = conn
            .call("stats", conn.timeout, admin.get_stats(conn.request(filter)))
            .await?;
        return show(output, &model::Stats::from(&s), |s| {
            model::stats_view(None, s)
        });
    }

    let what = "stats --watch";
    let req = pb::WatchStatsRequest {
        filter: Some(filter),
        interval_ms: args.interval,
    };
    // The deadline covers opening the stream, not the stream itself.
    let mut stream = conn
        .call(
            what,
            conn.timeout,
            admin.watch_stats(tonic::Request::new(req)),
        )
        .await?;
    let terminal = std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut prev: Option<model::Stats> = None;
    loop {
        let Some(s) = next_message(&mut stream, ctrl_c.as_mut(), what, conn).await? else {
            return Ok(());
        };
        let cur = model::Stats::from(&s);
        match output {
            Output::Json => {
                let mut line = serde_json::to_string(&cur)
                    .map_err(|e| Failure::error(format!("cannot encode JSON: {e}")))?;
                line.push('\n');
                emit(&line)?;
            }
            Output::Yaml => emit(&yaml_document(&cur)?)?,
            Output::Table | Output::Wide => {
                let view = model::stats_view(prev.as_ref(), &cur);
                if terminal {
                    emit(&format!(
                        "\x1b[H\x1b[2J{view}\n(every {}, Ctrl-C to stop)\n",
                        table::ms(args.interval)
                    ))?;
                } else {
                    emit(&format!("{view}\n"))?;
                }
            }
        }
        prev = Some(cur);
    }
}

// -- drain, health --------------------------------------------------------------

async fn config_dump(conn: &Conn, output: Output) -> Result<()> {
    let mut admin = conn.admin();
    let dump = conn
        .call(
            "config dump",
            conn.timeout,
            admin.get_config(conn.request(pb::GetConfigRequest {})),
        )
        .await?;
    let set = |b: bool| if b { "set" } else { "unset" };
    match output {
        Output::Json | Output::Yaml => {
            let config: serde_json::Value = serde_json::from_str(&dump.json).map_err(|e| {
                Failure::error(format!("config dump: bad JSON from the server: {e}"))
            })?;
            let shown = serde_json::json!({
                "config": config,
                "runtime_changes": dump.runtime_changes,
                "state_file": dump.state_file,
                "admin_token": set(dump.admin_token_set),
                "worker_token": set(dump.worker_token_set),
            });
            if output == Output::Yaml {
                return emit(&yaml::to_string(&shown));
            }
            let mut text = serde_json::to_string_pretty(&shown)
                .map_err(|e| Failure::error(format!("cannot encode JSON: {e}")))?;
            text.push('\n');
            emit(&text)
        }
        Output::Table | Output::Wide => {
            let mut text = String::from(
                "# The effective configuration of thriftworker (thriftctl config dump).\n",
            );
            if dump.runtime_changes.is_empty() {
                text.push_str("# No change at run time since start.\n");
            } else {
                for c in &dump.runtime_changes {
                    text.push_str(&format!("# {c}\n"));
                }
            }
            match dump.state_file.as_str() {
                "" => text.push_str("# Runtime changes are not persisted (no state file).\n"),
                f => text.push_str(&format!("# Runtime changes are persisted in {f}.\n")),
            }
            text.push_str(&format!(
                "# Admin token: {}; worker token: {} (never printed).\n\n",
                set(dump.admin_token_set),
                set(dump.worker_token_set)
            ));
            text.push_str(&dump.toml);
            emit(&text)
        }
    }
}

async fn events(conn: &Conn, output: Output, args: EventsArgs) -> Result<()> {
    let mut admin = conn.admin();
    if !args.watch {
        let resp = conn
            .call(
                "events",
                conn.timeout,
                admin.list_events(conn.request(pb::ListEventsRequest {})),
            )
            .await?;
        let list = model::EventList {
            events: resp.events.iter().map(Into::into).collect(),
        };
        return show(output, &list, |l| model::events_table(&l.events));
    }
    let what = "events --watch";
    // The deadline covers opening the stream, not the stream itself.
    let req = pb::WatchEventsRequest {
        include_history: true,
    };
    let mut stream = conn
        .call(
            what,
            conn.timeout,
            admin.watch_events(tonic::Request::new(req)),
        )
        .await?;
    if matches!(output, Output::Table | Output::Wide) {
        emit(&model::events_table(&[]))?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let Some(e) = next_message(&mut stream, ctrl_c.as_mut(), what, conn).await? else {
            return Ok(());
        };
        let event = model::Event::from(&e);
        let line = match output {
            Output::Json => {
                let mut line = serde_json::to_string(&event)
                    .map_err(|e| Failure::error(format!("cannot encode JSON: {e}")))?;
                line.push('\n');
                line
            }
            Output::Yaml => yaml_document(&event)?,
            Output::Table | Output::Wide => model::event_line(&event),
        };
        emit(&line)?;
    }
}

async fn log_level(conn: &Conn, output: Output, args: LogLevelArgs) -> Result<()> {
    let mut admin = conn.admin();
    let level = match args.filter {
        None => {
            conn.call(
                "get log level",
                conn.timeout,
                admin.get_log_level(conn.request(pb::GetLogLevelRequest {})),
            )
            .await?
        }
        Some(filter) => {
            conn.call(
                "set log level",
                conn.timeout,
                admin.set_log_level(conn.request(pb::SetLogLevelRequest { filter })),
            )
            .await?
        }
    };
    let shown = model::LogLevel {
        filter: level.filter,
    };
    show(output, &shown, |l| format!("{}\n", l.filter))
}

async fn drain(conn: &Conn, output: Output, args: DrainArgs) -> Result<()> {
    let mut admin = conn.admin();
    let timeout = longer(conn, args.timeout, Duration::from_secs(30));
    let req = pb::DrainRequest {
        timeout_ms: args.timeout.unwrap_or(0),
    };
    conn.call(
        "drain",
        timeout,
        admin.drain(conn.request_with_timeout(req, timeout)),
    )
    .await?;
    show(output, &model::Empty {}, |_| {
        "draining: thriftworker stops accepting, finishes its calls in flight, then exits\n"
            .to_string()
    })
}

fn serving_status_name(status: i32) -> &'static str {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Unknown) => "UNKNOWN",
        Ok(ServingStatus::Serving) => "SERVING",
        Ok(ServingStatus::NotServing) => "NOT_SERVING",
        Ok(ServingStatus::ServiceUnknown) => "SERVICE_UNKNOWN",
        Err(_) => "UNKNOWN",
    }
}

async fn health(conn: &Conn, output: Output, args: HealthArgs) -> Result<()> {
    let mut client = conn.health();
    let what = if args.service.is_empty() {
        "health".to_string()
    } else {
        format!("health --service {}", args.service)
    };
    let resp = conn
        .call(
            &what,
            conn.timeout,
            client.check(conn.request(HealthCheckRequest {
                service: args.service.clone(),
            })),
        )
        .await?;
    let status = model::HealthStatus {
        service: args.service,
        status: serving_status_name(resp.status).to_string(),
    };
    show(output, &status, |s| format!("{}\n", s.status))?;
    if resp.status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(Failure::silent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_flags() {
        let a = cli::ServiceSettingsArgs {
            timeout: Some(5000),
            method_timeouts: vec![("slow".into(), 30_000)],
            no_strip_prefix: true,
            ..Default::default()
        };
        let s = service_settings(&a);
        assert_eq!(s.timeout_ms, 5000);
        assert_eq!(s.method_timeouts_ms["slow"], 30_000);
        assert_eq!(s.queue_timeout_ms, 0, "unset = the server's default");
        assert_eq!(s.strip_service_prefix, Some(false));
        let s = service_settings(&cli::ServiceSettingsArgs::default());
        assert_eq!(s.strip_service_prefix, None, "unset = keep / default");
    }

    #[test]
    fn health_names() {
        assert_eq!(
            serving_status_name(ServingStatus::Serving as i32),
            "SERVING"
        );
        assert_eq!(
            serving_status_name(ServingStatus::NotServing as i32),
            "NOT_SERVING"
        );
        assert_eq!(serving_status_name(42), "UNKNOWN");
    }
}
