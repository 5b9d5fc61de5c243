//! A real, throw-away PostgreSQL cluster for tests (`initdb` + `pg_ctl` on a
//! free port in its own temp dir, stopped and removed when dropped), with
//! the pieces of Supabase that `schema/` relies on: the roles `anon`,
//! `authenticated` and `service_role`, and `auth.uid()` reading
//! `request.jwt.claims` as Supabase's does.
//!
//! Debian keeps `initdb` and `pg_ctl` in `/usr/lib/postgresql/<v>/bin`, off
//! PATH: they are looked for on PATH first, then there. As root, the server
//! runs as the `postgres` user (PostgreSQL refuses to run as root).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::free_port;

pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<String>,
    running: bool,
}

impl PostgresServer {
    /// A new cluster, started, with Supabase's roles and `auth.uid()`, and
    /// `schema/*.sql` applied in name order.
    pub async fn start_with_schema() -> PostgresServer {
        let server = PostgresServer::start();
        server.setup_supabase().await;
        server.apply_schema().await;
        server
    }

    /// A new, empty cluster, started.
    pub fn start() -> PostgresServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let bin = find_bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "chatgate-test-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            run(Command::new("chown").args(["-R", user]).arg(&dir), "chown");
        }
        let mut server = PostgresServer {
            bin,
            dir,
            port: free_port(),
            run_as,
            running: false,
        };
        let data = server.data_dir();
        let out = server.pg_command("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .args(["--locale=C", "--no-instructions"]);
        });
        assert!(out.status.success(), "initdb failed: {}", describe(&out));
        server.launch();
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (the superuser: the
    /// tables' owner, as chatgate connects in Supabase).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn pg_command(&self, tool: &str, args: impl FnOnce(&mut Command)) -> Output {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        args(&mut command);
        command
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }

    fn launch(&mut self) {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let out = self.pg_command("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &options, "-w", "-t", "120", "start"]);
        });
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            describe(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: the server dies as on a crash.
    pub fn stop_immediate(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let out = self.pg_command("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]);
        });
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            describe(&out)
        );
        self.running = false;
    }

    /// Starts it again on the same port, with its data.
    pub fn restart(&mut self) {
        self.stop_immediate();
        self.launch();
    }

    /// A client as the superuser.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to test postgres: {e}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Supabase's roles and `auth.uid()`, as a Supabase project has them.
    pub async fn setup_supabase(&self) {
        self.client()
            .await
            .batch_execute(SUPABASE_PIECES)
            .await
            .unwrap_or_else(|e| panic!("supabase pieces: {e}"));
    }

    /// Applies `schema/*.sql` in name order.
    pub async fn apply_schema(&self) {
        let client = self.client().await;
        for file in schema_files() {
            let sql = std::fs::read_to_string(&file).unwrap();
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop_immediate_quietly();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PostgresServer {
    fn stop_immediate_quietly(&mut self) {
        if self.running {
            let data = self.data_dir();
            let _ = self.pg_command("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "stop"]);
            });
            self.running = false;
        }
    }
}

/// What a Supabase project has before any migration: the API roles, the
/// `auth` schema with `auth.uid()`, and the default grants on `public`.
const SUPABASE_PIECES: &str = r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS; END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"#;

/// `schema/*.sql` of this repository, in name order.
pub fn schema_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
}

fn find_bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return dir;
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("initdb not found on PATH nor in /usr/lib/postgresql/*/bin: install postgresql")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", describe(&out));
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
