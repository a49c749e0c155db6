"""`unityvideo app`: the page's requests through Gradio's own client, its limits and cancel, and the page
itself rendered by headless Chromium (skipped with the reason where Chromium is not installed)."""

import socket
import threading

import numpy as np
import pytest

from unityvideo.assets import DEFAULT_CHECKPOINT
from unityvideo.browser import find_chromium, page_text, screenshot
from unityvideo.data import load_raw, probe_video, write_video

gradio = pytest.importorskip("gradio", reason="the app needs the app extra (gradio)")
from gradio_client import Client, handle_file  # noqa: E402

from unityvideo import app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    session = app.Session(DEFAULT_CHECKPOINT, device="cpu")
    port = free_port()
    page = app.launch(session, port=port, block=False)
    yield session, f"http://127.0.0.1:{port}/"
    page.close()
    session.close()
    assert not session.folder.exists()  # nothing left behind


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = np.random.default_rng(0).integers(0, 256, (12, 48, 40, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("app") / "clip.mp4", frames, fps=8, lossless=False)


def test_estimation_and_t2v_through_the_page_api(served, client, clip):
    session, _ = served
    spec = session.spec
    preview, files = client.predict("estimate", ["depth"], "", handle_file(str(clip)), 2, 0, 1, 0,
                                    api_name="/generate")
    assert probe_video(preview)[:3] == (spec.frames, spec.size[0], 2 * spec.size[1])  # input | depth
    npz = next(f for f in files if f.endswith(".npz"))
    assert load_raw(npz)["depth"].shape == (spec.frames, *spec.size)
    preview, files = client.predict("t2v", [], "a red ball rolls", None, 2, 0, 1, 0, api_name="/generate")
    assert probe_video(preview)[:3] == (spec.frames, *spec.size)
    assert any(f.endswith("out.mp4") for f in files)


def test_bad_requests_get_the_commands_message(client, clip):
    with pytest.raises(Exception, match="pass --prompt"):
        client.predict("t2v", [], "", None, 2, 0, 1, 0, api_name="/generate")
    with pytest.raises(Exception, match="exactly one --input"):
        client.predict("estimate", ["depth"], "", None, 2, 0, 1, 0, api_name="/generate")


def test_uploads_are_limited(served, clip, monkeypatch):
    monkeypatch.setattr(app, "MAX_UPLOAD_FRAMES", 5)
    with pytest.raises(ValueError, match="has 12 frames; this page takes up to 5"):
        app.check_upload(str(clip))
    monkeypatch.setattr(app, "MAX_UPLOAD_MB", 0)
    with pytest.raises(ValueError, match="takes up to 0 MB"):
        app.check_upload(str(clip))


def test_cancel_stops_a_running_request(served, clip, monkeypatch):
    """The cancel button sets the session's flag (from another request thread); the run stops at the
    next step's end instead of running its 30 steps."""
    session, _ = served
    check = session._check_cancel
    steps = []

    def press_cancel_during_step_2(pipe, step, timestep, kwargs):
        steps.append(step)
        if step == 1:
            threading.Thread(target=session.cancel.set).start()
            threading.Event().wait(0.2)
        return check(pipe, step, timestep, kwargs)

    monkeypatch.setattr(session, "_check_cancel", press_cancel_during_step_2)
    with pytest.raises(app.Cancelled, match="cancelled at step 2"):
        session.generate("estimate", ["depth"], "", str(clip), 30, None, 1, 0)
    assert steps == [0, 1]


def test_a_world_clip_as_input_and_control_from_its_depth(served, client):
    session, _ = served
    video, caption = session.world_clip(3, "rgb")
    assert probe_video(video)[:3] == (session.spec.frames, *session.spec.size) and caption
    depth, _ = session.world_clip(3, "depth")
    assert depth.endswith("depth.mkv") and str(session.folder) in depth
    preview, files = client.predict("control", ["depth"], caption, handle_file(depth), 2, 0, 1, 0,
                                    api_name="/generate")
    assert probe_video(preview)[:3] == (session.spec.frames, session.spec.size[0], 2 * session.spec.size[1])


def test_only_this_machine_unless_asked(caplog):
    assert not app.warn_if_public("127.0.0.1")
    assert app.warn_if_public("0.0.0.0") and "anyone who can reach this address" in caplog.text


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_renders_in_a_real_browser(served, tmp_path):
    _, url = served
    text = page_text(url, wait_ms=15000)
    for label in ("UnityVideo", "render a world clip as input", "generate", "estimate", "t2v"):
        assert label in text, label
    png = screenshot(url, tmp_path / "app.png", width=1400, height=1000, wait_ms=15000)
    from PIL import Image

    with Image.open(png) as image:
        assert len(np.unique(np.asarray(image.convert("L")))) > 20  # a drawn page, not a blank one
