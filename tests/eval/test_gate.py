import json

import pytest

from m3ret.eval.gate import decide_gate, record_published


def test_first_model_passes_then_ratio_decides(tmp_path):
    gate = tmp_path / "models" / "index_gate.json"
    first = decide_gate(0.30, gate, min_ratio=0.98)
    assert first.passed and first.previous is None and "first model" in first.reason

    record_published(gate, "m3ret_aaa", "aaa", 0.50)
    saved = json.loads(gate.read_text())
    assert saved["collection"] == "m3ret_aaa" and saved["model_version"] == "aaa" and saved["mean_map"] == 0.50
    assert [p.name for p in gate.parent.iterdir()] == ["index_gate.json"]  # no temporary file left

    ok = decide_gate(0.49, gate, min_ratio=0.98)  # 0.49 >= 0.98 * 0.50
    assert ok.passed and ok.previous == 0.50 and ok.candidate == 0.49 and "passes" in ok.reason
    bad = decide_gate(0.489, gate, min_ratio=0.98)
    assert not bad.passed and "fails" in bad.reason and "aaa" in bad.reason

    # the next decision compares with the model published last
    record_published(gate, "m3ret_bbb", "bbb", 0.60)
    assert not decide_gate(0.55, gate, min_ratio=0.98).passed
    assert decide_gate(0.55, gate, min_ratio=0.9).passed


def test_broken_gate_file_stops_the_publish(tmp_path):
    gate = tmp_path / "gate.json"
    gate.write_text('{"collection": "x"')
    with pytest.raises(ValueError, match=r"gate\.json"):
        decide_gate(0.9, gate, min_ratio=0.98)
