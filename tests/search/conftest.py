"""Search-test fixtures: synthetic studies (built with Optuna directly, no simulation) and a
throwaway PostgreSQL server.

`make_study` writes a study in the layout the search uses (an SQLite file in an output folder,
trials carrying ``design``, ``design_hash``, ``metrics`` user attributes and Optuna's
``constraints`` system attribute; see `search.report`), with real `codesign.design.Design`
dicts whose knobs vary with the trial, so the views are tested on realistic records.

`postgres_url` starts a PostgreSQL cluster in a temporary folder (``initdb`` + ``pg_ctl`` from
Debian's ``postgresql`` package, run as the ``postgres`` user when the tests run as root, on a
unix socket in the temporary folder, no TCP), yields a SQLAlchemy URL Optuna accepts
(``postgresql+psycopg2://...``) and stops and removes the cluster afterwards. A server that will
not start fails the test with the server's log (never a skip).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from codesign.design import Design
from codesign.mapping import BatchingSpec, CacheSpec, Mapping

OBJECTIVES = ("tpot_p99_ms", "energy_j_per_token", "quality_loss")
DIRECTIONS: tuple[Literal["minimize", "maximize"], ...] = ("minimize", "minimize", "minimize")
CATEGORIES = ("compute", "hbm", "pcie", "all_to_all", "host_cpu")

StudyMaker = Callable[..., tuple[Path, str]]


def _design(
    rng: np.random.Generator, memo: dict[tuple[Any, ...], tuple[dict[str, Any], str]], bases: dict[str, Design]
) -> tuple[dict[str, Any], dict[str, Any], str]:
    params: dict[str, Any] = {
        "platform": str(rng.choice(["h100-pcie5-host", "dgx-h100"])),
        "expert_fraction": float(rng.choice([0.2, 0.4, 0.6, 0.8, 1.0])),
        "cache": str(rng.choice(["lru", "lfu"])),
        "batch": int(rng.choice([1, 4, 16, 64])),
    }
    n_dev = 1
    if params["platform"] == "dgx-h100":  # a conditional knob: only with several devices
        params["placement"] = str(rng.choice(["round-robin", "load-balanced"]))
        n_dev = 8
    key = tuple(sorted(params.items()))
    if key not in memo:
        mapping = Mapping(
            n_devices=n_dev,
            cache=CacheSpec(policy=params["cache"], expert_fraction=params["expert_fraction"]),
            placement=params.get("placement", "round-robin"),
            batching=BatchingSpec(max_batch=params["batch"]),
        )
        if params["platform"] not in bases:  # small workload: the report re-simulates one design
            bases[params["platform"]] = Design.from_presets(
                platform=params["platform"], n_requests=2, prompt_tokens=32, output_tokens=8
            )
        design = bases[params["platform"]].with_(mapping=mapping)
        memo[key] = (design.to_dict(), design.content_hash)
    ddict, h = memo[key]
    return params, ddict, h


def _distributions(params: dict[str, Any]) -> dict[str, Any]:
    dists: dict[str, Any] = {
        "platform": CategoricalDistribution(["h100-pcie5-host", "dgx-h100"]),
        "expert_fraction": FloatDistribution(0.2, 1.0),
        "cache": CategoricalDistribution(["lru", "lfu"]),
        "batch": IntDistribution(1, 64),
    }
    if "placement" in params:
        dists["placement"] = CategoricalDistribution(["round-robin", "load-balanced"])
    return dists


def synthetic_trials(
    n_trials: int, *, seed: int = 0, n_failed: int = 0, design_as_text: bool = True
) -> list[optuna.trial.FrozenTrial]:
    """``n_trials`` completed synthetic trials (some infeasible: TPOT p99 over a 70 ms SLO) and
    ``n_failed`` failed ones; the design attribute is ``Design.to_json()`` text or (with
    ``design_as_text=False``) its dict, both of which the views read. Objective values are smooth
    functions of the knobs plus noise, so fronts and importances are non-trivial."""
    rng = np.random.default_rng(seed)
    trials = []
    memo: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}
    bases: dict[str, Design] = {}
    for number in range(n_trials):
        params, ddict, design_hash = _design(rng, memo, bases)
        frac, batch = params["expert_fraction"], params["batch"]
        tpot = (
            40.0
            / (0.2 + frac)
            * (1 + 0.1 * rng.standard_normal() ** 2)
            / (8 if params["platform"] == "dgx-h100" else 1)
        )
        energy = 2.0 + 3.0 * frac + 5.0 / batch + 0.2 * rng.random()
        quality = 2.1 - 0.05 * np.log(batch) + 0.01 * rng.random()
        breakdown = {
            "compute": float(rng.uniform(0.1, 1.0)),
            "hbm": float(rng.uniform(0.1, 1.0)),
            "pcie": float((1 - frac) * rng.uniform(0.5, 3.0)),
            "all_to_all": float(0.5 * rng.random() if params["platform"] == "dgx-h100" else 0.0),
            "host_cpu": 0.0,
        }
        neck = max(breakdown, key=lambda k: breakdown[k])
        metrics = {
            fid: {"fidelity": fid, "tpot_p99_s": tpot / 1e3, "breakdown_s": breakdown, "bottleneck": neck}
            for fid in (("analytic", "sim") if number % 3 == 0 else ("analytic",))
        }
        slo = tpot / 70.0 - 1.0  # feasible iff TPOT p99 <= 70 ms
        if number % 10 == 7:  # does not fit: never evaluated, placeholder objectives (as the search records)
            trials.append(
                optuna.trial.create_trial(
                    params=params,
                    distributions=_distributions(params),
                    values=[1e12, 1e12, float(quality)],
                    user_attrs={
                        "design": json.dumps(ddict) if design_as_text else ddict,
                        "design_hash": design_hash,
                        "metrics": {},
                        "infeasible": "mapping does not fit device 0 (h100-sxm) hbm",
                        "constraints": {"fits": 1.0, "tpot_slo": 0.0},
                    },
                    system_attrs={"constraints": [1.0, 0.0]},
                )
            )
            continue
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions=_distributions(params),
                values=[float(tpot), float(energy), float(quality)],
                user_attrs={
                    "design": json.dumps(ddict) if design_as_text else ddict,
                    "design_hash": design_hash,
                    "metrics": metrics,
                    "constraints": {"fits": -1.0, "tpot_slo": slo},
                },
                system_attrs={"constraints": [-1.0, slo]},
            )
        )
    for _ in range(n_failed):
        trials.append(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return trials


def new_study(storage: str | None, study_name: str = "synthetic") -> optuna.Study:
    """An empty three-objective study named like the search's, objectives named."""
    study = optuna.create_study(storage=storage, study_name=study_name, directions=list(DIRECTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    return study


def build_study(
    out_dir: Path, n_trials: int, *, seed: int = 0, study_name: str = "synthetic", n_failed: int = 0
) -> tuple[Path, str]:
    """Write ``out_dir/study.db`` (SQLite, as the search does) holding `synthetic_trials`; return the
    folder and the study name. Optuna's SQLite storage takes ~75 ms a trial here: keep it small."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study = new_study(f"sqlite:///{out_dir / 'study.db'}", study_name)
    study.add_trials(synthetic_trials(n_trials, seed=seed, n_failed=n_failed, design_as_text=False))
    return out_dir, study_name


@pytest.fixture
def make_study(tmp_path: Path) -> StudyMaker:
    """``make_study(n_trials, **kw)`` -> (output folder, study name) of a fresh synthetic study."""
    counter = iter(range(1_000_000))

    def make(n_trials: int, **kw: Any) -> tuple[Path, str]:
        return build_study(tmp_path / f"out{next(counter)}", n_trials, **kw)

    return make


@pytest.fixture(scope="session")
def small_study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-trial SQLite study (and 2 failed trials) in an output folder, as the search writes it;
    shared by the view tests: copy it before changing it."""
    out, _ = build_study(tmp_path_factory.mktemp("small"), 24, n_failed=2)
    return out


# --------------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str:
    """The path of a PostgreSQL server program (Debian keeps them in /usr/lib/postgresql/N/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(
            f"PostgreSQL's {name} not found (on PATH or /usr/lib/postgresql/*/bin): run .ci/services.sh "
            "(installs Debian's postgresql package)"
        )
    return candidates[-1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as ``postgres`` when we are root (the server refuses to run as root)."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh PostgreSQL database on a throwaway server (see module doc)."""
    import psycopg2  # noqa: F401  (the driver Optuna's SQLAlchemy storage will use)

    root = Path(tempfile.mkdtemp(prefix="pg-"))
    data, sock, logfile = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    started = False
    try:
        subprocess.run(
            _as_server_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        opts = f"-c listen_addresses='' -k {sock} -c fsync=off"
        proc = subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-l", str(logfile), "-o", opts, "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
            timeout=90,
        )
        if proc.returncode != 0:
            log = logfile.read_text() if logfile.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()} {log.strip()}")
        started = True
        yield f"postgresql+psycopg2://postgres@/postgres?host={sock}"
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr}") from None
    finally:
        if started:
            subprocess.run(
                _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
