"""capskeras.onednn: oneDNN on before TensorFlow starts, and said once when off."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from capskeras import onednn


def _python(code, **environment):
    """Runs `code` in a fresh interpreter with `environment` over a copy of ours."""
    env = {key: value for key, value in os.environ.items() if key != onednn.VARIABLE}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_default_on_follows_tensorflows_linux_policy():
    assert not onednn.default_on({"avx2", "fma", "avx512f", "avx512bw"})
    assert onednn.default_on({"avx2", "avx512f", "avx512_vnni"})
    assert onednn.default_on({"avx2", "avx_vnni"})
    assert onednn.default_on({"amx_tile"})


def test_cpu_info_reads_model_and_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    )
    model, flags = onednn.cpu_info(str(cpuinfo))
    assert model == "AMD EPYC 7B13"
    assert flags == {"fpu", "sse4_2", "avx", "avx2", "fma"}
    missing_model, missing_flags = onednn.cpu_info(str(tmp_path / "missing"))
    assert missing_model and missing_flags == frozenset()


def test_enable_sets_the_variable_only_before_tensorflow_and_when_unset(monkeypatch):
    tensorflow = sys.modules["tensorflow"]  # Imported by conftest's set-up.
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.delenv(onednn.VARIABLE, raising=False)
    assert onednn.enable()
    assert os.environ[onednn.VARIABLE] == "1"
    monkeypatch.setenv(onednn.VARIABLE, "0")  # The user's choice stands, 0 included.
    assert not onednn.enable()
    assert os.environ[onednn.VARIABLE] == "0"
    # Once TensorFlow runs, setting it would change nothing: it is left alone.
    monkeypatch.setitem(sys.modules, "tensorflow", tensorflow)
    monkeypatch.delenv(onednn.VARIABLE)
    assert not onednn.enable()
    assert onednn.VARIABLE not in os.environ


def test_status_reports_the_cpu_and_what_tensorflow_runs():
    report = onednn.status()
    assert set(report) == {"cpu", "vector_extensions", "variable", "default_on", "enabled",
                           "matters"}
    model, flags = onednn.cpu_info()
    assert report["cpu"] == model
    assert set(report["vector_extensions"]) <= flags
    # The suite runs with oneDNN on (conftest), and TensorFlow is imported here.
    import tensorflow  # noqa: F401

    assert report["enabled"] == (os.environ.get(onednn.VARIABLE, "") in ("1", "true")
                                 or report["default_on"])


def test_entry_points_turn_onednn_on_before_tensorflow_starts():
    """`capskeras-train`'s function, run as the script runs it (--helpshort exits).

    `cli.evaluate` is the same three lines around the evaluator.
    """
    result = _python(
        """
        import sys
        sys.argv = ["capskeras", "--helpshort"]
        from capskeras import cli, onednn
        try:
            cli.train()
        except SystemExit:
            pass
        assert "tensorflow" in sys.modules
        print("enabled" if onednn.status()["enabled"] else "off")
        """
    )
    assert result.stdout.strip().splitlines()[-1] == "enabled", result.stdout + result.stderr


def _fake_status(enabled, matters):
    return lambda: {"enabled": enabled, "matters": matters, "cpu": "Some AVX2 CPU",
                    "variable": None}


def test_warns_once_when_tensorflow_runs_without_onednn_where_it_matters(monkeypatch):
    monkeypatch.setattr(onednn, "_warned", False)
    monkeypatch.delenv(onednn.VARIABLE, raising=False)
    monkeypatch.setattr(onednn, "status", _fake_status(False, True))
    with pytest.warns(RuntimeWarning, match="TF_ENABLE_ONEDNN_OPTS=1") as caught:
        assert onednn.warn_if_off()
    assert "Some AVX2 CPU" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not onednn.warn_if_off()  # Once per process.


@pytest.mark.parametrize(
    "variable, enabled, matters",
    [("0", False, True), (None, True, True), (None, False, False)],
    ids=["user_chose_off", "on", "default_decides"],
)
def test_silent_when_the_user_chose_or_onednn_is_on_or_it_does_not_matter(
        monkeypatch, variable, enabled, matters):
    monkeypatch.setattr(onednn, "_warned", False)
    if variable is None:
        monkeypatch.delenv(onednn.VARIABLE, raising=False)
    else:
        monkeypatch.setenv(onednn.VARIABLE, variable)
    monkeypatch.setattr(onednn, "status", _fake_status(enabled, matters))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not onednn.warn_if_off()


def test_silent_on_other_keras_backends(monkeypatch):
    """JAX and PyTorch run the layers on their own kernels: TensorFlow's oneDNN is no concern."""
    import keras

    monkeypatch.setattr(onednn, "_warned", False)
    monkeypatch.delenv(onednn.VARIABLE, raising=False)
    monkeypatch.setattr(onednn, "status", _fake_status(False, True))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not onednn.warn_if_off()


def test_importing_the_layers_after_tensorflow_without_onednn_warns_where_it_matters():
    """User code that imports TensorFlow first, without the variable."""
    result = _python(
        """
        import warnings
        warnings.simplefilter("always")
        import tensorflow
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from capskeras import layers, onednn
        print(len([w for w in caught if "TF_ENABLE_ONEDNN_OPTS=1" in str(w.message)]))
        print(onednn.status()["matters"])
        """
    )
    warned, matters = result.stdout.strip().splitlines()[-2:]
    # One warning on AVX2 machines like the AMD EPYC; none where TensorFlow's default is on.
    assert warned == ("1" if matters == "True" else "0"), result.stdout + result.stderr
