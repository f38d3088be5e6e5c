"""The bench beside a native target: torch-ar rows, every backend's roofline curve and the
memory limit (GGUF bytes over the measured read bandwidth)."""

from __future__ import annotations

import pytest

from paradec.bench.config import parse_peers
from paradec.bench.record_schema import problem
from paradec.bench.report import bandwidth_limit_s, markdown, write_report
from paradec.bench.roofline import probe_llama, read_bandwidth_gbs
from paradec.bench.runners import OPT_IN_PEERS, TorchARRunner, make_peer

from test_bench import fake_result


def test_torch_rows_are_opt_in():
    assert not set(parse_peers("all", False)) & OPT_IN_PEERS
    assert parse_peers("torch-ar,torch-ar-bf16,llama.cpp", False) == ["torch-ar", "torch-ar-bf16", "llama.cpp"]


class _Engine:
    backend, name = "torch", "tiny"


def test_torch_row_refuses_a_torch_target():
    row = make_peer(_Engine(), "torch-ar-bf16")
    assert isinstance(row, TorchARRunner) and row.dtype == "bfloat16"
    with pytest.raises(RuntimeError, match="already runs on the torch backend"):
        row.prepare()


class _FakeLlama:
    """Records what each eval saw: the cache length it appended to and how many tokens."""

    def __init__(self):
        self.n_tokens, self.calls = 0, []

    def n_ctx(self):
        return 256

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        self.calls.append((self.n_tokens, len(tokens)))
        self.n_tokens += len(tokens)


def test_llama_probe_cuts_the_cache_back_to_the_prompt_before_every_k():
    llm = _FakeLlama()
    curve = probe_llama(llm, list(range(10)), ks=(1, 4, 8), repeats=2)
    assert set(curve) == {1, 4, 8} and all(v > 0 for v in curve.values())
    assert llm.calls[0] == (0, 10)  # the prompt
    assert llm.calls[1:] == [(10, k) for _ in range(3) for k in (1, 4, 8)]  # warm-up round + 2 timed
    assert llm.n_tokens == 0  # reset afterwards


def test_read_bandwidth_is_a_positive_figure():
    assert read_bandwidth_gbs(mb=8, repeats=2) > 0


def test_report_shows_every_curve_and_the_memory_limit(tmp_path):
    r = fake_result()
    r["roofline"].update(backend="native", curves={"torch float32": [0.03, 0.031, None], "llama.cpp": [0.02, 0.03, 0.05]},
                         bandwidth_gbs=20.0, weight_bytes=100_000_000)
    assert bandwidth_limit_s(r["roofline"]) == pytest.approx(0.005)
    md = markdown(r)
    assert "| k | native (rows above) | torch float32 | llama.cpp |" in md
    assert "| 4 | 12.00 | - | 50.00 |" in md  # a k a backend did not reach shows as -
    assert "**5.00 ms** a forward" in md and "at 50% of it" in md
    paths = write_report(r, str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "roofline.png").read_bytes()[:4] == b"\x89PNG"
    assert paths["roofline"].endswith("roofline.png")


def test_roofline_record_with_curves_passes_the_schema():
    rec = {"type": "roofline", "segment": 0, "t": 1.0, "prompt_tokens": 10, "k": [1, 2], "seconds": [0.1, 0.2],
           "backend": "native", "curves": {"llama.cpp": [0.1, 0.3]}, "bandwidth_gbs": 12.5, "weight_bytes": 10}
    assert problem(rec) is None
    assert problem({**rec, "weight_bytes": "10"}) is not None


def test_ideal_speedup_only_for_rows_that_run_the_probed_forward():
    """The roofline curve is the target's forward: beside a native target only paradec's rows get
    an ideal speedup from it (transformers, llama.cpp and the torch-ar rows run other forwards);
    on a torch target the transformers peers run the same model and keep theirs."""
    from pathlib import Path

    from paradec.bench.metrics import OVERALL
    from paradec.bench.records import read_records, result_from_records

    docs = Path(__file__).parents[1] / "docs/bench"
    native = result_from_records(read_records(docs / "smollm2-cpu-native/records.jsonl", "--from").records)
    assert native["roofline"]["backend"] == "native"
    ideal = {r["name"]: native["summary"][r["name"]][OVERALL]["ideal_speedup"] for r in native["rows"]}
    assert all(ideal[n] for n in ("ar", "suffix", "auto"))
    assert all(ideal[n] is None for n in ("hf", "torch-ar", "llama.cpp", "llama.cpp-pld"))
    torch_run = result_from_records(read_records(docs / "smollm2-cpu/records.jsonl", "--from").records)
    assert "backend" not in torch_run["roofline"]  # recorded before the field: a torch target
    assert torch_run["summary"]["hf"][OVERALL]["ideal_speedup"]
    assert torch_run["summary"]["llama.cpp"][OVERALL]["ideal_speedup"] is None
