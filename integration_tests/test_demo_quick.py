"""`d2it demo --quick` end to end through the installed console script: the README's main command."""

import json
import re


def test_demo_quick_writes_the_report(d2it_cli, tmp_path):
    out = tmp_path / "demo-out"
    proc = d2it_cli("demo", "--quick", "--quiet", "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "open" in proc.stdout and "index.html" in proc.stdout
    index = out / "index.html"
    page = index.read_text()
    # every step of the pipeline is in the timing table, and none failed
    for step in ("build", "thresholds", "train dvae", "encode", "train grain", "train content", "sample", "report"):
        assert f"<td>{step}</td>" in page, step
    assert "failed" not in page.lower().replace("class='failed'", "").replace(".failed", "")
    # every image the page shows exists and is a PNG
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 5
    for src in sources:
        data = (out / src).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", src
    for name in ("samples_by_class.png", "reconstructions.png", "data_by_class.png", "loss_train_content.png"):
        assert f"figures/{name}" in sources, name
    # the trained system and the samples are usable artefacts
    assert (out / "system" / "d2it.json").is_file()
    for part in ("vae", "grain", "content"):
        assert (out / "system" / f"{part}.safetensors").is_file()
    assert len(list((out / "samples" / "samples").glob("*.png"))) >= 4
    timings = json.loads((out / "timings.json").read_text())
    assert timings["quick"] is True and len(timings["steps"]) == 8
    assert all(step["status"] == "ok" for step in timings["steps"])
