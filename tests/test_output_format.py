"""One output convention: every command that prints a table takes --format text|markdown|json
(estimate also keeps --json), and every table goes through lsp_codesign.table."""

from __future__ import annotations

import json

import pytest

from lsp_codesign.cli import build_parser, main
from lsp_codesign.table import format_markdown, render

GEMM = ["--hw", "vita", "--gemm", "M=197,N=192,K=576"]


def _sub_parsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    return action.choices


def test_table_commands_take_the_same_format_option():
    subs = _sub_parsers()
    for name in ("configs", "estimate", "report", "verify", "evaluate"):
        opt = next(a for a in subs[name]._actions if a.dest == "format")  # noqa: SLF001
        assert opt.choices == ("text", "markdown", "json") and opt.default == "text", name


def test_markdown_table_layout():
    text = format_markdown(["layer", "shape", "cycles"], [["a", "1x2", "5"]], left=2,
                           total=["TOTAL", "", "5"])
    assert text.splitlines() == ["| layer | shape | cycles |", "|---|---|---:|",
                                 "| a | 1x2 | 5 |", "| **TOTAL** |  | **5** |"]
    assert render("text", ["a"], [["x"]]) == "a\n-\nx"
    with pytest.raises(ValueError, match="json"):
        render("json", ["a"], [["x"]])


def test_estimate_json_alias_equals_format_json(capsys):
    assert main(["estimate", *GEMM, "--json"]) == 0
    alias = capsys.readouterr().out
    assert main(["estimate", *GEMM, "--format", "json"]) == 0
    assert capsys.readouterr().out == alias
    assert json.loads(alias)["estimate"]["cycles"] > 0


def test_estimate_markdown(capsys):
    assert main(["estimate", *GEMM, "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("**vita: block_sparse") and lines[2] == "| quantity | value |"
    assert "| kept blocks | 432/432 |" in lines


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_report_formats_agree(fmt, capsys):
    from lsp_codesign.config import load_config
    from lsp_codesign.cycle_model import estimate_layer

    assert main(["report", "--hw", "vita", "--model", "vit-mnist", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cfg = load_config("vita")
    # the dense total is the cycle model's own sum over the 17 layers (whatever the engine's
    # numbers): the three formats must all carry it
    want = sum(estimate_layer(cfg, d["m"], d["n"], d["k"], None).cycles
               for d in (lay["dense"] for lay in doc["layers"]))
    assert len(doc["layers"]) == 17 and doc["totals"]["cycles_dense"] == want > 0
    assert main(["report", "--hw", "vita", "--model", "vit-mnist", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        assert json.loads(out) == doc
    elif fmt == "markdown":
        assert f"| **TOTAL** |  | **{want:,}** |" in out
    else:
        assert out.splitlines()[2].startswith("layer") and f"{want:,}" in out


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_verify_formats(fmt, tmp_path, capsys):
    from tests.test_verify import make_run

    rd = make_run(tmp_path / "run")
    assert main(["verify", str(rd), "--sim", "iss", "--layers", "2", "--format", fmt]) == 0
    out, err = capsys.readouterr()
    if fmt == "json":
        doc = json.loads(out)  # nothing but JSON on stdout; the notes on stderr
        assert doc["totals"]["ok"] and len(doc["layers"]) == 2
        assert "all layers bit-exact and cycle-exact" in err
    else:
        assert out.splitlines()[0].startswith("| layer | MxN->K |")
        assert "| **TOTAL** |" in out


def test_evaluate_markdown_layout():
    from lsp_codesign.commands.evaluate import format_table

    rec = {"model": "m", "method": "lsp", "flops_target": 0.5, "block": "16x16",
           "blocks_kept": 3, "blocks_total": 8, "test_images": 10,
           "models": {"dense": {"top1": 0.991, "correct": 9910, "kl_to_dense": 0.0},
                      "pruned": {"top1": 0.5, "correct": 5, "kl_to_dense": 0.5372},
                      "finetuned": None}}
    lines = format_table(rec, "markdown").splitlines()
    assert lines[2:5] == ["| model | top-1 % | correct | KL to dense |", "|---|---:|---:|---:|",
                          "| dense | 99.10 | 9910 | 0.0000 |"]
    assert lines[-1].startswith("(not finetuned yet")
