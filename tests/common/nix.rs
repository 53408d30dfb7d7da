//! The real Nix client for black-box tests: the host's Nix 2.8 (Debian 12) or Nix 2.26
//! in the Debian 13 chroot that `scripts/nix-chroot.sh` prepares
//! (`NIX_STORED_TEST_NIX_CHROOT`), each with its own nix.conf and a fresh client-side
//! cache per call, building small closures with a static busybox.
//!
//! Skipped (with a message) when `nix` or the chroot is missing, unless
//! NIX_STORED_REQUIRE_NIX=1, which the project's test command sets so that CI can never
//! skip them silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::{nix_conf, temp_dir};

/// Nix store mutations (builds, deletions) of parallel tests would contend for the
/// store's locks; the tests of one client take turns (the two clients have a store each).
static HOST_STORE: Mutex<()> = Mutex::new(());
static CHROOT_STORE: Mutex<()> = Mutex::new(());

/// A closure of three paths (app -> lib -> data) built with a static busybox.
const CLOSURE_NIX: &str = r#"{ tag }:
let
  bb = builtins.path { path = ./bb; name = "busybox-${tag}"; };
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
    PATH = "${bb}/bin";
  };
  data = mk "data-${tag}" "echo data-${tag} > $out";
  lib = mk "lib-${tag}" "mkdir $out; echo building lib-${tag}; echo ${data} > $out/ref";
  app = mk "app-${tag}" "mkdir -p $out/bin; echo building app-${tag}; echo 'uses ${lib}' > $out/bin/app; head -c 8192 /dev/zero >> $out/bin/app";
  # Six leaves nothing else refers to, under one root: a closure whose paths a client
  # may upload side by side.
  leaves = map (i: mk "leaf${toString i}-${tag}" "mkdir $out; echo leaf${toString i}-${tag} > $out/x; head -c 65536 /dev/zero >> $out/x") [ 1 2 3 4 5 6 ];
  wide = mk "wide-${tag}" "mkdir $out; echo ${toString leaves} > $out/leaves";
in { inherit app lib wide; }
"#;

static CALLS: AtomicU64 = AtomicU64::new(0);

/// Which Nix drives a test: the host's (Debian 12, Nix 2.8) or the one in the Debian 13
/// chroot that `scripts/nix-chroot.sh` prepares (Nix 2.26).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Client {
    /// The host's Nix 2.8.
    Host,
    /// The chroot's Nix 2.26.
    Chroot,
}

/// The chroot of the Nix 2.26 client: `NIX_STORED_TEST_NIX_CHROOT` (scripts/test.sh sets
/// it), else the script's default directory when it is complete. Its mounts are made
/// once per test binary (the script is idempotent).
pub fn chroot_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("NIX_STORED_TEST_NIX_CHROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/nix-stored-test/trixie"));
        if !dir.join(".nix-stored-complete").is_file() {
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nix-chroot.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("run scripts/nix-chroot.sh");
        assert!(
            out.status.success(),
            "scripts/nix-chroot.sh {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dir)
    })
    .as_ref()
}

/// A Nix client configured for the tests: its own nix.conf, a fresh client-side
/// cache for every call (Nix remembers hits and misses across calls otherwise).
pub struct Nix {
    pub client: Client,
    /// `/` for the host's client, the chroot's directory for the other.
    pub root: PathBuf,
    /// The working directory, as the client sees it.
    pub work: PathBuf,
    /// The CA file Nix trusts for HTTPS (`NIX_SSL_CERT_FILE`: Nix 2.8 has no
    /// `ssl-cert-file` setting yet, later versions read the variable too), as the
    /// client sees it.
    pub ca_file: Option<String>,
    _turn: MutexGuard<'static, ()>,
}

/// A built closure.
pub struct Closure {
    /// The derivation of its top.
    pub drv: String,
    /// Its top output path (`app`, `lib` or `wide`).
    pub app: String,
    /// Every output path of the closure (not the busybox source).
    pub paths: Vec<String>,
    /// The tag that makes its paths new.
    pub tag: String,
}

impl Nix {
    pub fn new(client: Client) -> Option<Nix> {
        let required = std::env::var("NIX_STORED_REQUIRE_NIX").as_deref() == Ok("1");
        let (root, turn) = match client {
            Client::Host => {
                let have_nix = Command::new("nix").arg("--version").output().is_ok();
                if !have_nix {
                    assert!(
                        !required,
                        "nix is not installed but NIX_STORED_REQUIRE_NIX=1"
                    );
                    eprintln!(
                        "SKIPPED: nix not installed (apt-get install --no-install-recommends nix-bin)"
                    );
                    return None;
                }
                (PathBuf::from("/"), &HOST_STORE)
            }
            Client::Chroot => match chroot_dir() {
                Some(dir) => (dir.clone(), &CHROOT_STORE),
                None => {
                    assert!(
                        !required,
                        "the Nix 2.26 chroot is missing (run scripts/nix-chroot.sh) but NIX_STORED_REQUIRE_NIX=1"
                    );
                    eprintln!("SKIPPED: no Nix 2.26 chroot (run scripts/nix-chroot.sh as root)");
                    return None;
                }
            },
        };
        let turn = turn.lock().unwrap_or_else(|e| e.into_inner());
        let mut nix = Nix {
            client,
            root,
            work: PathBuf::new(),
            ca_file: None,
            _turn: turn,
        };
        nix.work = nix.temp_dir("nix");
        let work = nix.host(&nix.work);
        std::fs::create_dir_all(work.join("conf")).unwrap();
        std::fs::write(work.join("conf/nix.conf"), nix_conf(60)).unwrap();
        let bin = work.join("bb/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is needed");
        for applet in ["sh", "mkdir", "head"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        std::fs::write(work.join("closure.nix"), CLOSURE_NIX).unwrap();
        Some(nix)
    }

    /// Nix 2.26 or later (the chroot's client).
    pub fn newer(&self) -> bool {
        self.client == Client::Chroot
    }

    /// Where a path the client sees (`/nix/store/…`, its working directory) is on the host.
    pub fn host(&self, client_path: impl AsRef<Path>) -> PathBuf {
        let p = client_path.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// A fresh directory the client can read and write; the path as the client sees it.
    /// (The chroot's lies below its `/tmp`, where the servers on the host reach it too.)
    pub fn temp_dir(&self, tag: &str) -> PathBuf {
        let host_dir = temp_dir(tag);
        if self.client == Client::Host {
            return host_dir;
        }
        std::fs::remove_dir(&host_dir).unwrap();
        let inside = Path::new("/tmp").join(host_dir.file_name().unwrap());
        std::fs::create_dir_all(self.host(&inside)).unwrap();
        inside
    }

    /// A copy of a host file the client can read; the path as the client sees it.
    pub fn import_file(&self, host_file: &Path) -> String {
        let inside = self.work.join(host_file.file_name().unwrap());
        std::fs::copy(host_file, self.host(&inside)).unwrap();
        inside.display().to_string()
    }

    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let conf = self.work.join("conf");
        let xdg = self.work.join(format!("xdg-{n}"));
        match self.client {
            Client::Host => {
                let mut cmd = Command::new(prog);
                cmd.args(args)
                    .current_dir(&self.work)
                    .env("NIX_CONF_DIR", conf)
                    .env("XDG_CACHE_HOME", xdg)
                    .env_remove("SSL_CERT_FILE")
                    .env_remove("NIX_SSL_CERT_FILE");
                if let Some(ca) = &self.ca_file {
                    cmd.env("NIX_SSL_CERT_FILE", ca);
                }
                cmd
            }
            Client::Chroot => {
                let mut cmd = Command::new("chroot");
                cmd.arg(&self.root).args([
                    "/usr/bin/env",
                    "-i",
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root",
                ]);
                cmd.arg(format!("NIX_CONF_DIR={}", conf.display()))
                    .arg(format!("XDG_CACHE_HOME={}", xdg.display()));
                if let Some(ca) = &self.ca_file {
                    cmd.arg(format!("NIX_SSL_CERT_FILE={ca}"));
                }
                cmd.args(["bash", "-c", r#"cd "$0" && exec "$@""#])
                    .arg(&self.work)
                    .arg(prog)
                    .args(args);
                cmd
            }
        }
    }

    pub fn run(&self, prog: &str, args: &[&str]) -> Output {
        let out = self.command(prog, args).output().unwrap();
        self.log(prog, args, &out);
        out
    }

    pub fn log(&self, prog: &str, args: &[&str], out: &Output) {
        eprintln!(
            "$ [{:?}] {prog} {} -> {}\n{}",
            self.client,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(out.status.success(), "{prog} {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(!out.status.success(), "{prog} {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Builds the closure's attribute `attr` (`app` or `wide`) with a fresh tag.
    pub fn build_attr(&self, attr: &str) -> Closure {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let tag = format!(
            "t{}x{n}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                % 1_000_000_007
        );
        let drv = self.ok(
            "nix-instantiate",
            &["closure.nix", "-A", attr, "--argstr", "tag", &tag],
        );
        let app = self.ok("nix-store", &["-r", &drv]);
        let paths = self
            .ok("nix-store", &["-qR", &app])
            .lines()
            .filter(|p| !p.contains("busybox"))
            .map(str::to_owned)
            .collect();
        Closure {
            drv,
            app,
            paths,
            tag,
        }
    }

    pub fn build(&self) -> Closure {
        self.build_attr("app")
    }

    /// A signing key pair named `test-1`: (secret key file as the client sees it,
    /// public key).
    pub fn keys(&self) -> (String, String) {
        self.keys_named("test-1")
    }

    /// A signing key pair named `name`: (secret key file as the client sees it,
    /// public key).
    pub fn keys_named(&self, name: &str) -> (String, String) {
        let sk = self.ok("nix", &["key", "generate-secret", "--key-name", name]);
        let file = self.work.join("sk");
        std::fs::write(self.host(&file), &sk).unwrap();
        let args = ["key", "convert-secret-to-public"];
        let out = self
            .command("nix", &args)
            .stdin(std::fs::File::open(self.host(&file)).unwrap())
            .output()
            .unwrap();
        self.log("nix", &args, &out);
        assert!(out.status.success());
        (
            file.display().to_string(),
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        )
    }

    /// `nix copy --to URL PATH`, which must succeed.
    pub fn copy_to(&self, url: &str, path: &str) {
        self.ok("nix", &["copy", "--to", url, path]);
    }

    /// Deletes the closure from the client's store.
    pub fn delete(&self, c: &Closure) {
        self.delete_paths(&c.paths);
        assert!(!self.valid(&c.app));
    }

    /// Deletes `paths` from the client's store.
    pub fn delete_paths(&self, paths: &[String]) {
        let mut args = vec!["--delete"];
        args.extend(paths.iter().map(String::as_str));
        self.ok("nix-store", &args);
    }

    pub fn valid(&self, path: &str) -> bool {
        self.run("nix-store", &["--check-validity", path])
            .status
            .success()
    }

    /// Writes a file into the working directory; its path as the client sees it.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.work.join(name);
        std::fs::write(self.host(&p), text).unwrap();
        p.display().to_string()
    }

    pub fn app_contents(&self, c: &Closure) -> String {
        std::fs::read_to_string(self.host(Path::new(&c.app).join("bin/app"))).unwrap()
    }
}

impl Drop for Nix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.host(&self.work));
    }
}

/// Every test below that drives Nix runs once with each client: `<test>::nix_2_8` with
/// the host's Nix 2.8, `<test>::nix_2_26` with the chroot's Nix 2.26.
#[macro_export]
macro_rules! with_both_clients {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn nix_2_8() {
                super::$test($crate::common::nix::Client::Host)
            }
            #[test]
            fn nix_2_26() {
                super::$test($crate::common::nix::Client::Chroot)
            }
        }
    )*};
}
