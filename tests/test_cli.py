"""The command line as a user meets it: the library/application boundary, the help text, and
bad input refused with one line before any work (no traceback, nothing written)."""

import os
import subprocess
import sys

import pytest

from jet_jax.cli import commands, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_PACKAGES = ("train", "configs", "benchmarks", "jet_jax_train", "jet_jax_configs")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_library_and_help_load_no_application_module():
    code = ("import sys, jet_jax, jet_jax.cli, jet_jax.presets, jet_jax.tokenizer\n"
            "import jet_jax.commands.generate, jet_jax.commands.convert, jet_jax.commands.bench\n"
            "rc = jet_jax.cli.main(['--help'])\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {APP_PACKAGES!r})\n"
            "print('LOADED', bad, rc)")
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert "LOADED [] 0" in r.stdout, r.stdout
    # Every command has a help line (no developer text, nothing cut mid-sentence).
    for name in ("generate", "convert", "bench", "demo", "distill", "plan", "postnas"):
        line = next(x for x in r.stdout.splitlines() if x.strip().startswith(name + " "))
        assert len(line.split(name, 1)[1].strip()) > 10, line


def test_library_sources_never_name_the_application():
    for dirpath, _, files in os.walk(os.path.join(ROOT, "jet_jax")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                for pkg in ("train", "configs", "benchmarks", "jet_jax_train", "jet_jax_configs"):
                    assert f"import {pkg}" not in text and f"from {pkg}." not in text \
                        and f'"{pkg}.' not in text, (f, pkg)


def test_setup_cfg_installs_every_package_folder_under_its_import_name():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(cfg.get("options", "packages").split())
    mapping = dict(line.split(" = ") for line in cfg.get("options", "package_dir").strip().splitlines())
    folders = {name: folder for name, folder in mapping.items()}
    folders.update({"jet_jax": "jet_jax", "pallas_kernels": "pallas_kernels"})
    expected = set()
    for name, folder in folders.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
                expected.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    assert listed == expected
    assert not {"train", "configs"} & {p.split(".")[0] for p in listed}


def test_training_commands_are_registered_not_imported():
    table = commands()
    assert {"demo", "distill", "plan", "postnas"} <= set(table)
    assert all(not m.startswith("jet_jax.") for k, m in table.items()
               if k in ("demo", "distill", "plan", "postnas"))


def test_unknown_command(capsys):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input
def _refused(capsys, argv, *needles, rc=2):
    """`jet-jax argv` fails with exit code `rc` and one stderr line containing every needle."""
    assert main(argv) == rc
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _truncated_hf_dir(path):
    """An HF-looking directory whose config.json is cut off mid-object."""
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "qwen2",\n  "vocab_size": 512,\n')
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.mark.parametrize("command, setting, needle", [
    (["demo"], "budget=abc", "budget: expected an integer, got 'abc'"),
    (["demo"], "bugdet=2", "unknown PostNAS setting 'bugdet'"),
    (["demo"], "budget=-1", "budget must be >= 0"),
    (["demo"], "blocks=('jet','nope')", "unknown linear block 'nope'"),
    (["demo"], "mqar.num_pairs=x", "mqar.num_pairs: expected an integer"),
    (["demo", "--distill-only"], "train.steps=abc", "train.steps: expected an integer"),
    (["demo", "--distill-only"], "trian.steps=1", "unknown key 'trian'"),
    (["postnas", "pipeline"], "budget=abc", "budget: expected an integer"),
    (["postnas", "supernet"], "teacher=/no/such", "'/no/such' is neither"),
    (["postnas", "supernet"], "teacher_preset=nope", "unknown preset 'nope'"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, command, setting, needle):
    out = tmp_path / "run"
    _refused(capsys, [*command, "--output-dir", str(out), "--set", setting],
             f"jet-jax {command[0]}: error", needle)
    assert not out.exists()


def test_postnas_refuses_missing_stages_and_bad_files(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(capsys, ["postnas", "search", "--output-dir", str(out)], "no super-network")
    bad = tmp_path / "cfg.py"
    bad.write_text("from jet_jax_train.postnas.config import PostNASConfig\nCONFIG = PostNASConfig(\n")
    _refused(capsys, ["postnas", "pipeline", "--config", str(bad)], str(bad), "line")
    bad.write_text("from jet_jax_train.postnas.config import PostNASConfig\nCONFIG = PostNASConfig(budget='2')\n")
    _refused(capsys, ["postnas", "pipeline", "--config", str(bad)], str(bad), "budget")
    assert not out.exists()


def test_distill_refuses_bad_settings_and_files(tmp_path, capsys):
    cfg = os.path.join(ROOT, "configs", "distill_tiny.py")
    out = tmp_path / "run"
    sets = ["--set", f"train.output_dir={out}"]
    _refused(capsys, ["distill", "--config", cfg, *sets, "--set", "train.steps=abc"],
             "train.steps: expected an integer")
    _refused(capsys, ["distill", "--config", str(tmp_path / "missing.py")], "does not exist")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    _refused(capsys, ["distill", "--config", str(bad)], str(bad), "line 1")
    teacher = _truncated_hf_dir(tmp_path / "teacher")
    _refused(capsys, ["distill", "--config", cfg, *sets, "--set", f"model.teacher={teacher}"],
             str(teacher / "config.json"), "not valid JSON")
    _refused(capsys, ["distill", "--config", cfg, *sets, "--set", "model.teacher=preset:nope"],
             "unknown preset")
    assert not out.exists()


def test_truncated_config_json_is_named_by_convert_generate_and_plan(tmp_path, capsys):
    src = _truncated_hf_dir(tmp_path / "hf")
    name = str(src / "config.json")
    _refused(capsys, ["convert", "--from", str(src), "--to", str(tmp_path / "out")], name, rc=1)
    assert not (tmp_path / "out").exists()
    _refused(capsys, ["generate", "--model", str(src), "--prompt", "hi"], name, rc=1)
    _refused(capsys, ["plan", "--model", name, "--mesh", "1,1,1"], name)


def test_bench_rejects_bad_arguments_at_parse_time(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--contexts", "abc"])
    assert e.value.code == 2
    assert "--contexts" in capsys.readouterr().err


def test_kernel_flags_are_the_ops_kernels(capsys):
    """`--attention/gdr/conv-implementation` of bench, generate and eval offer the ops' kernels
    (attention without the self-attention-only cudnn / splash); a bad name is refused at parse
    time."""
    from jet_jax.commands import kernel_choice
    from jet_jax.ops.attention import IMPLEMENTATIONS as ATTENTION
    from jet_jax.ops.dynamic_conv import IMPLEMENTATIONS as CONV
    from jet_jax.ops.gated_delta_rule import IMPLEMENTATIONS as GDR

    assert kernel_choice.ATTENTION == tuple(i for i in ATTENTION if i not in ("cudnn", "splash"))
    assert kernel_choice.GDR == GDR and kernel_choice.CONV == CONV
    for cmd in ("bench", "generate", "eval"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--gdr-implementation", "triton"])
        assert e.value.code == 2 and "--gdr-implementation" in capsys.readouterr().err


def test_bench_kernel_flags_reach_both_models(capsys, kernel_calls):
    assert main(["bench", "--student", "tiny-jet", "--contexts", "64", "--decode-steps", "1",
                 "--repeats", "1", "--max-batch", "1", "--no-jet-only", "--plot", "", "--json", "",
                 "--attention-implementation", "chunked", "--gdr-implementation", "recurrent"]) == 0
    out = capsys.readouterr().out
    assert "kernels: attention chunked, gated delta rule recurrent" in out
    assert "teacher" in out and "student / teacher" in out
    # the tiny-jet student has 1 attn + 1 swa layer, its teacher 4 attention layers
    assert set(kernel_calls["attention"]) == {"chunked"} and len(kernel_calls["attention"]) >= 4 + 2
    assert set(kernel_calls["gdr"]) == {"recurrent"}


def test_generate_kernel_flags_reach_the_model_and_change_no_token(capsys, kernel_calls):
    argv = ["generate", "--preset", "tiny-jet", "--prompt", "hello", "--max-new-tokens", "6",
            "--ignore-eos"]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    kernel_calls["attention"].clear(), kernel_calls["gdr"].clear()
    assert main(argv + ["--attention-implementation", "chunked", "--gdr-implementation",
                        "recurrent"]) == 0
    assert capsys.readouterr().out == plain
    assert set(kernel_calls["attention"]) == {"chunked"} and set(kernel_calls["gdr"]) == {"recurrent"}
