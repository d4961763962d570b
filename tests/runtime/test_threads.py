"""The one thread policy (runtime/threads.py): precedence, errors, ORT sessions, and the CLI
process applying what it logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetalplanes.core.errors import UserError
from fetalplanes.runtime import threads as policy_mod
from fetalplanes.runtime.threads import ThreadPolicy, apply_process_policy, available_cores, choose_policy


def test_default_is_one_thread_per_idle_core_and_passive() -> None:
    p = choose_policy(None, {}, busy=lambda: 0.0)
    assert (p.threads, p.wait, p.cores) == (available_cores(), "passive", available_cores())
    assert p.environment()["OMP_WAIT_POLICY"] == "PASSIVE" and not p.spinning
    assert choose_policy(None, {}, busy=lambda: None).threads == available_cores()  # no /proc/stat


@pytest.mark.parametrize("others, want", [(0.3, 4), (0.6, 3), (1.0, 3), (2.4, 2), (9.0, 1)])
def test_cores_other_processes_keep_busy_are_left_to_them(monkeypatch, others, want) -> None:
    monkeypatch.setattr(policy_mod, "available_cores", lambda: 4)
    p = choose_policy(None, {}, busy=lambda: others)
    assert (p.threads, p.cores) == (want, 4) and "busy" in p.source


def test_busy_cores_sees_a_busy_loop() -> None:
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat")
    cores = available_cores()
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.5)
        busy = policy_mod.busy_cores(0.3)
    finally:
        loop.kill()
        loop.wait()
    assert busy is not None and 0.6 <= busy <= cores


@pytest.mark.parametrize("arg, env, want, source", [
    (None, {"OMP_NUM_THREADS": "3"}, 3, "OMP_NUM_THREADS"),
    (None, {"OMP_NUM_THREADS": "3", "FETALPLANES_THREADS": "5"}, 5, "FETALPLANES_THREADS"),
    (2, {"OMP_NUM_THREADS": "3", "FETALPLANES_THREADS": "5"}, 2, "--threads"),
])
def test_the_option_wins_over_the_environment(arg, env, want, source) -> None:
    p = choose_policy(arg, env)
    assert (p.threads, p.source) == (want, source)


def test_spin_leaves_the_libraries_defaults() -> None:
    p = choose_policy(None, {"FETALPLANES_WAIT": "spin"})
    assert p.spinning and "OMP_WAIT_POLICY" not in p.environment()


@pytest.mark.parametrize("env, named", [
    ({"FETALPLANES_THREADS": "many"}, "FETALPLANES_THREADS='many'"),
    ({"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS='0'"),
    ({"FETALPLANES_WAIT": "busy"}, "['passive', 'spin']"),
])
def test_a_malformed_variable_is_one_line_naming_it(env, named) -> None:
    with pytest.raises(UserError, match="expected") as err:
        choose_policy(None, env)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_applying_writes_the_openmp_variables_and_becomes_the_process_policy(monkeypatch) -> None:
    monkeypatch.setattr(policy_mod, "_applied", None)
    env: dict[str, str] = {}
    p = apply_process_policy(ThreadPolicy(1, "passive", "--threads", 2), env)
    assert env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert policy_mod.process_policy() is p


def test_onnx_sessions_follow_the_process_policy(monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from fetalplanes.runtime.session import session_options

    monkeypatch.setattr(policy_mod, "_applied", ThreadPolicy(1, "passive", "--threads", 2))
    opts = session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setattr(policy_mod, "_applied", ThreadPolicy(2, "spin", "FETALPLANES_THREADS", 2))
    opts = session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert session_options(threads=3, spinning=False).intra_op_num_threads == 3  # a caller's own count wins


# The CLI process: the policy is logged once and is what torch and OpenMP then run with.
_PROBE = """
import atexit, json, os, sys
def report():
    import torch
    sys.stderr.write("PROBE " + json.dumps({"torch": torch.get_num_threads(),
                                          "wait": os.environ.get("OMP_WAIT_POLICY")}) + "\\n")
atexit.register(report)
sys.argv = ["fetalplanes", *sys.argv[1:]]
from fetalplanes.cli import main
main()
"""


def _cli(args: list[str], env_extra: dict[str, str]) -> tuple[dict, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update({"HF_HUB_OFFLINE": "1", **env_extra})
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(next(ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE "))[6:])
    return probe, [ln for ln in proc.stderr.splitlines() if "intra-op thread" in ln]


@pytest.mark.parametrize("args, env, want", [
    (["--threads", "1"], {"FETALPLANES_THREADS": "2"}, 1),   # the option overrides the variable
    ([], {"FETALPLANES_THREADS": "1"}, 1),                   # the variable overrides the default
])
def test_the_cli_runs_with_the_threads_it_logs(tiny_checkpoint: Path, synth_data: Path, args, env, want) -> None:
    image = next((synth_data / "Images").glob("*.png"))
    probe, logged = _cli(["-v", *args, "predict", "--checkpoint", str(tiny_checkpoint), str(image)], env)
    assert len(logged) == 1, logged  # logged once
    assert f"{want} intra-op thread " in logged[0] and "passive waiting" in logged[0]
    assert probe == {"torch": want, "wait": "PASSIVE"}


def test_quick_commands_log_the_policy_only_with_verbose_and_long_ones_always(tiny_checkpoint: Path,
                                                                            synth_data: Path) -> None:
    image = next((synth_data / "Images").glob("*.png"))
    _, logged = _cli(["predict", "--checkpoint", str(tiny_checkpoint), str(image)], {})
    assert logged == []  # a one-image answer prints only the answer
    _, logged = _cli(["evaluate", "--model", str(tiny_checkpoint), "--data", str(synth_data), "--split", "all",
                      "--out", str(synth_data.parent / "ev_threads")], {"FETALPLANES_THREADS": "1"})
    assert len(logged) == 1 and logged[0].startswith("INFO threads: 1 intra-op thread")


# Bounds: ORT and torch take a C int and ORT starts one OS thread each, so a huge count is refused
# in one line naming the setting (it was a pybind TypeError blamed on the model file, a traceback
# from torch.set_num_threads, or a session start that never returned).
@pytest.mark.parametrize("arg, env, named", [
    (2**31, {}, "--threads 2147483648"),
    (policy_mod.MAX_THREADS + 1, {}, f"--threads {policy_mod.MAX_THREADS + 1}"),
    (None, {"FETALPLANES_THREADS": "100000"}, "FETALPLANES_THREADS='100000'"),
    (None, {"OMP_NUM_THREADS": "99999999999999999999"}, "OMP_NUM_THREADS='99999999999999999999'"),
])
def test_a_thread_count_beyond_the_bound_is_one_line_naming_it(arg, env, named) -> None:
    with pytest.raises(UserError, match=f"expected an integer from 1 to {policy_mod.MAX_THREADS}") as err:
        choose_policy(arg, env)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert choose_policy(policy_mod.MAX_THREADS, env).threads == policy_mod.MAX_THREADS


def test_an_onnx_session_refuses_a_huge_count_as_the_setting_not_the_file(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from fetalplanes.runtime.session import load_session

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert load_session(path, threads=2) is not None
    with pytest.raises(UserError, match="threads 2147483648: expected an integer from 1 to") as err:
        load_session(path, threads=2**31)
    assert str(path) not in str(err.value) and "\n" not in str(err.value)


def test_a_torch_predictor_refuses_a_huge_count_in_one_line() -> None:
    torch = pytest.importorskip("torch")
    from fetalplanes.core.spec import ModelSpec
    from fetalplanes.models.torch_backend import TorchPredictor

    spec = ModelSpec(name="t", task="planes", class_names=("a", "b"), architecture={})
    with pytest.raises(UserError, match="threads 2147483648: expected an integer from 1 to"):
        TorchPredictor.from_model(torch.nn.Linear(2, 2), spec, threads=2**31)


def test_a_process_that_applied_no_policy_never_samples_the_cores(monkeypatch) -> None:
    """A library user's program (no CLI entry point) owns its CPU: the policy comes from its
    environment or the usable cores, without a /proc/stat sample per call."""
    monkeypatch.setattr(policy_mod, "_applied", None)
    monkeypatch.delenv("FETALPLANES_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def sampled(*args, **kwargs):
        raise AssertionError("busy_cores was sampled")

    monkeypatch.setattr(policy_mod, "busy_cores", sampled)
    p = policy_mod.process_policy()
    assert p.threads == available_cores() and p.source == "one per usable core"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert policy_mod.process_policy().threads == 1


_HELP_PROBE = """
import sys, fetalplanes.runtime.threads as t
real = t.busy_cores
def counted(*args):
    print("SAMPLED", file=sys.stderr)
    return real(*args)
t.busy_cores = counted
from fetalplanes.cli import main
sys.argv = ["fetalplanes", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("argv, sampled", [(["stream", "--help"], False), (["predict", "no.png", "--model", "no.onnx"], True)])
def test_cli_help_does_not_sample_the_cores(argv: list[str], sampled: bool) -> None:
    """`fetalplanes CMD --help` runs nothing, so it pays no core sample; a real command does."""
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FETALPLANES_THREADS": "", "OMP_NUM_THREADS": ""})
    assert ("SAMPLED" in proc.stderr) is sampled, proc.stderr[-500:]
