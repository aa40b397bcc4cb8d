"""Developer sessions. ``python3 -m nox`` runs the test suite; ``-s up`` runs the cluster.

Every session installs from the hash-pinned lock files under ``requirements/``
(regenerate them with ``nox -s lock``), so a fresh machine with only Python
gets exactly the versions CI ran, nats-server binary included.
"""

import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
TOOLS = ROOT / ".tools" / "bin"
NATSCLI = "github.com/nats-io/natscli/nats@v0.5.0"
HELM = "helm.sh/helm/v3/cmd/helm@v3.22.0"
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy" / "k3d").glob("*.sh"))


def install(session: nox.Session, lock: str) -> None:
    session.install("--require-hashes", "-r", f"requirements/{lock}")
    session.install("--no-deps", "-e", ".")


def build_natscli(session: nox.Session, required: bool = False) -> None:
    """The real `nats` CLI, from its official Go module at a pinned version, when Go exists."""
    if (TOOLS / "nats").exists():
        return
    if shutil.which("go") is None:
        if required:
            session.error("Go is not installed: the `nats` CLI is built from " + NATSCLI)
        session.warn("Go is not installed: the `nats pub` test will be skipped")
        return
    TOOLS.mkdir(parents=True, exist_ok=True)
    session.run("go", "install", NATSCLI, env={"GOBIN": str(TOOLS)}, external=True)


def build_helm(session: nox.Session) -> Path:
    """Helm from its official Go module at a pinned version (Go is required here)."""
    helm = TOOLS / "helm"
    if not helm.exists():
        if shutil.which("go") is None:
            session.error("`nox -s chart` needs Go to build helm (" + HELM + ")")
        TOOLS.mkdir(parents=True, exist_ok=True)
        session.run(
            "go", "install", HELM, env={"GOBIN": str(TOOLS), "CGO_ENABLED": "0"}, external=True
        )
    return helm


def apt_install(session: nox.Session, *packages: str) -> None:
    """Debian packages, installed when missing (CI runs as root)."""
    missing = [
        package
        for package in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        ).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        session.error(f"{', '.join(missing)} not installed, and apt-get is not here")
    apt = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", env=apt, external=True)
    session.run("apt-get", "install", "-y", "-qq", *missing, env=apt, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    install(session, "dev.lock")
    build_natscli(session)
    env = {"NATS_CLI": str(TOOLS / "nats")} if (TOOLS / "nats").exists() else {}
    session.run("pytest", *session.posargs, env=env)


@nox.session
def faults(session: nox.Session) -> None:
    """Every fault scenario (the quick ones also run in `tests`); reports go to .faults/."""
    install(session, "dev.lock")
    session.run(
        "pytest",
        "tests/faults",
        "-m",
        "faults or not faults",
        *session.posargs,
        env={"FAULTS_REPORT_DIR": str(ROOT / ".faults")},
    )


@nox.session
def faults_workers(session: nox.Session) -> None:
    """The fault scenarios again with every node running ``--workers 2``."""
    install(session, "dev.lock")
    session.run(
        "pytest",
        "tests/faults/test_scenarios.py",
        "-m",
        "faults or not faults",
        *session.posargs,
        env={"FAULTS_REPORT_DIR": str(ROOT / ".faults-workers"), "CHAT_TEST_WORKERS": "2"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (about 30 minutes, Centrifugo built once and cached); writes
    bench/results/latest.{json,md}."""
    install(session, "dev.lock")
    session.run("python", "-m", "bench.run", *session.posargs)


@nox.session
def chart(session: nox.Session) -> None:
    """The Helm chart: helm lint --strict, render + schema checks + agreement with the code
    (tests/deploy), a rolling update of real processes started as the chart starts them,
    and shellcheck on the k3d scripts. No cluster needed."""
    install(session, "dev.lock")
    build_natscli(session)  # the chart's `nats pub` snippet runs with the real CLI
    helm = str(build_helm(session))
    chart_dir = "deploy/helm/chat-cluster"
    for values in (
        ["--set", "auth.jwksSecret=chat-jwks"],  # the one value without a default
        ["-f", f"{chart_dir}/ci/all-options.yaml"],
        ["-f", f"{chart_dir}/ci/minimal.yaml"],
    ):
        session.run(helm, "lint", "--strict", chart_dir, *values, external=True)
    session.run("pytest", "tests/deploy", "-m", "chart", *session.posargs, env={"HELM": helm})
    apt_install(session, "shellcheck")
    session.run("shellcheck", "--severity=style", *SCRIPTS, external=True)


@nox.session
def image(session: nox.Session) -> None:
    """The images, built with podman from deploy/Dockerfile unchanged (stand-in bases made
    with mmdebstrap where no registry serves its FROM images), and the chart's workloads
    run as containers with their manifests' settings (tests/images). Podman and its tools
    come from Debian."""
    install(session, "dev.lock")
    podman = ["podman", "runc", "uidmap", "slirp4netns", "fuse-overlayfs", "netavark"]
    apt_install(session, *podman, "aardvark-dns", "mmdebstrap")
    helm = str(build_helm(session))
    session.run("python", "-m", "tests.images.build")
    session.run("pytest", "tests/images", "-m", "image", *session.posargs, env={"HELM": helm})


@nox.session
def lint(session: nox.Session) -> None:
    install(session, "dev.lock")
    session.run("ruff", "check", "services", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "services", "tests", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session, "dev.lock")
    session.run("mypy")


@nox.session
def js(session: nox.Session) -> None:
    """The TypeScript client (clients/js): npm's pinned TypeScript, a build, and Node's own
    test runner against a cluster started with `chat-cluster up` (Python from this venv)."""
    install(session, "dev.lock")
    if shutil.which("npm") is None:
        session.error("`nox -s js` needs Node.js >= 20 and npm")
    session.chdir(ROOT / "clients" / "js")
    session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
    session.run("npm", "run", "build", external=True)
    python = str(Path(session.bin) / "python")
    session.run("npm", "test", env={"CHAT_PYTHON": python}, external=True)


@nox.session
def browser(session: nox.Session) -> None:
    """The chat page in a real Chromium: Debian's chromium and chromedriver (installed
    when missing), Selenium from the lock file."""
    install(session, "browser.lock")
    apt_install(session, "chromium", "chromium-driver")
    session.run("pytest", "tests/browser", "-m", "browser", *session.posargs)


@nox.session
def up(session: nox.Session) -> None:
    """Run the local cluster (3 chat nodes, the archiver, nats-server). Ctrl-C stops it."""
    install(session, "run.lock")
    # Ctrl-C reaches nox and `up` together; nox must then wait while `up` stops the
    # nodes and NATS in order (its default would kill `up` after half a second).
    session.run("chat-cluster", "up", *session.posargs, interrupt_timeout=60)


@nox.session
def natscli(session: nox.Session) -> None:
    """Build the `nats` CLI into .tools/bin (for `nats pub` by hand, as in the README)."""
    build_natscli(session, required=True)
    session.log(f"nats CLI: {TOOLS / 'nats'}")


@nox.session
def lock(session: nox.Session) -> None:
    """Regenerate the hash-pinned lock files from pyproject.toml."""
    session.install("pip-tools==7.6.2")
    # --no-emit-find-links: a PIP_FIND_LINKS of the machine that locks must not end up in
    # the files (it names a directory no other machine has).
    common = [
        "--generate-hashes",
        "--strip-extras",
        "--allow-unsafe",
        "--no-emit-find-links",
        "pyproject.toml",
    ]
    session.run("pip-compile", "-q", "--extra", "dev", "-o", "requirements/dev.lock", *common)
    session.run("pip-compile", "-q", "-o", "requirements/run.lock", *common)
    browser = ["--extra", "dev", "--extra", "browser", "-o", "requirements/browser.lock"]
    session.run("pip-compile", "-q", *browser, *common)
