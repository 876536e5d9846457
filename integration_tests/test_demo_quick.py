"""`d2it demo --quick` end to end through the installed console script: the README's main command, on openmoji."""

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
    for name in ("samples_vs_heldout.png", "reconstructions.png", "loss_train_content.png"):
        assert f"figures/{name}" in sources, name
    # generated emoji next to held-out ones, scored by SWD against the held-out split, with the floor
    assert "held-out" in page and "openmoji:test" in page
    assert "Sliced Wasserstein distance" in page and "lower is better" in page and "floor" in page
    assert "CC BY-SA 4.0" in page and "OpenMoji" in page
    # the trained system and the samples are usable artefacts
    assert (out / "system" / "d2it.json").is_file()
    for part in ("vae", "grain", "content"):
        assert (out / "system" / f"{part}.safetensors").is_file()
    assert len(list((out / "samples" / "samples").glob("*.png"))) >= 4
    timings = json.loads((out / "timings.json").read_text())
    assert timings["quick"] is True and len(timings["steps"]) == 8 and timings["data"] == "openmoji"
    assert all(step["status"] == "ok" for step in timings["steps"])
    results = json.loads((out / "results.json").read_text())
    assert results == timings["results"]
    for key in ("swd", "swd_floor"):
        assert set(results[key]) == {"swd", "swd_64", "swd_32", "swd_16"}
        assert all(v > 0 for v in results[key].values())
    assert results["swd_heldout"] == 449 and results["heldout"]["license"] == "CC BY-SA 4.0"
