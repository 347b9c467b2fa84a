"""Install the package as the README tells a production user, and run a workflow on it.

    python .ci/production_install.py [--source DIR]

In a fresh virtualenv, ``pip install "<source>[<extras>]"`` (not editable) with exactly
the extras of the README's "Running it for real" section, then a real ``celery worker``
from that virtualenv (Redis broker, PostgreSQL history) runs one workflow to completion.
Nothing from the development install can leak in: the worker and the client run the
virtualenv's own interpreter, from a folder outside the source tree. A dependency the
extras forget (kombu's Redis transport needs ``kombu[redis]``) fails here.

Uses the same services as the tests (``ROMANCY_TEST_PG``, ``ROMANCY_TEST_REDIS``), so it
runs after the development install (``pip install -e ".[dev]"``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from tests.processes import ServiceProcess, log_says  # noqa: E402 - after the path is set
from tests.services import (  # noqa: E402
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
    redis_client,
)

# The README's production install line, e.g. pip install "celery-romancy[postgres,redis]".
INSTALL_LINE = re.compile(r'pip install "celery-romancy\[(?P<extras>[a-z0-9_,-]+)\]"')
# ... and the history database URL it configures, e.g. postgresql+psycopg://: its driver.
DATABASE_URL_LINE = re.compile(r'romancy_database_url = "(?P<scheme>postgresql(\+\w+)?)://')
TIMEOUT = 120.0


def readme_extras(readme: Path) -> str:
    """The extras of the first install line in the README's production section."""
    text = readme.read_text()
    section = text[text.index("## Running it for real") :]
    found = INSTALL_LINE.search(section)
    if found is None:
        raise SystemExit(f"no 'pip install \"celery-romancy[...]\"' line in {readme}'s section")
    return found["extras"]


def readme_scheme(readme: Path) -> str:
    """The URL scheme (dialect+driver) of the README's production history database."""
    text = readme.read_text()
    found = DATABASE_URL_LINE.search(text[text.index("## Running it for real") :])
    if found is None:
        raise SystemExit(f"no 'romancy_database_url = \"postgresql...' line in {readme}")
    return found["scheme"]


def copy_sources(source: Path, target: Path) -> None:
    """The files git knows (committed or not, ignored ones left out): no stale build/."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        origin = source / name
        if origin.is_file():  # a file deleted but not yet committed is listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)


def run(
    argv: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"FAILED ({done.returncode}): {' '.join(argv)}\n{done.stdout}\n{done.stderr}"
        )
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the source tree to install")
    source = parser.parse_args().source.resolve()
    extras = readme_extras(source / "README.md")
    timings: dict[str, float] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="romancy-production-") as scratch:
        folder = Path(scratch)
        copy_sources(source, folder / "src")
        run([sys.executable, "-m", "venv", str(folder / "venv")])
        timings["venv"] = time.monotonic() - began
        bin_dir = folder / "venv" / "bin"
        run(
            [str(bin_dir / "pip"), "install", "-q", f"{folder / 'src'}[{extras}]"],
            timeout=600,
        )
        timings["install"] = time.monotonic() - began - sum(timings.values())
        check_package_data(bin_dir)
        app_dir = folder / "app"
        app_dir.mkdir()
        shutil.copy2(ROOT / ".ci" / "production_app.py", app_dir)
        check_workflow(bin_dir, app_dir, folder, readme_scheme(source / "README.md"), timings)
    total = time.monotonic() - began
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    print(f"production install check passed: [{extras}] in {total:.1f} s ({parts})")


# Files beside the code that an installed package must carry (package_data in setup.cfg).
PACKAGE_DATA = (
    "py.typed",
    "storage/migrations/script.py.mako",
    "contrib/django/templates/celery_romancy/admin/workflowinstance_list.html",
    "contrib/django/templates/celery_romancy/admin/workflowinstance_detail.html",
    "contrib/dashboard/static/dashboard.css",
    "contrib/dashboard/static/dashboard.js",
)


def check_package_data(bin_dir: Path) -> None:
    probe = (
        "import sys; from importlib.resources import files; root = files('celery_romancy'); "
        f"missing = [p for p in {PACKAGE_DATA!r} if not root.joinpath(p).is_file()]; "
        "sys.exit(f'not installed: {missing}' if missing else 0)"
    )
    run([str(bin_dir / "python"), "-c", probe])


def check_workflow(
    bin_dir: Path, app_dir: Path, folder: Path, scheme: str, timings: dict[str, float]
) -> None:
    """A worker from the virtualenv runs one workflow against Redis and PostgreSQL, on
    the driver of the README's URL (``scheme``), with only the README's extras."""
    database_url = create_pg_database()
    on_driver = sa.make_url(database_url).set(drivername=scheme)
    queue = f"romancy-production-{uuid.uuid4().hex[:10]}"
    unrelated = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
    env = {k: v for k, v in os.environ.items() if k not in unrelated}
    env.update(
        CELERY_BROKER_URL=REDIS_URL,
        ROMANCY_DATABASE_URL=on_driver.render_as_string(hide_password=False),
        PRODUCTION_CHECK_QUEUE=queue,
        CHECK_TIMEOUT=str(TIMEOUT),
    )
    argv = [str(bin_dir / "celery"), "-A", "production_app", "worker", "-l", "INFO", "-c", "2"]
    worker = ServiceProcess("production-worker", argv, env, folder, cwd=app_dir)
    try:
        began = time.monotonic()
        worker.start(log_says(" ready."), timeout=TIMEOUT)
        if f"celery_romancy: workflow history in {scheme}://" not in worker.log():
            raise SystemExit(f"the worker did not name its history database:\n{worker.log()}")
        timings["worker start"] = time.monotonic() - began
        began = time.monotonic()
        client = [str(bin_dir / "python"), "production_app.py"]
        done = run(client, cwd=app_dir, env=env, timeout=TIMEOUT + 30)
        if done.stdout.strip() != "84":
            raise SystemExit(f"expected 84, got {done.stdout!r}\nworker log:\n{worker.log()}")
        timings["workflow"] = time.monotonic() - began
    except (TimeoutError, subprocess.TimeoutExpired):
        print(f"worker log:\n{worker.log()}", file=sys.stderr)
        raise
    finally:
        worker.stop()
        redis_client().delete(queue)
        drop_pg_database(database_url)


if __name__ == "__main__":
    main()
