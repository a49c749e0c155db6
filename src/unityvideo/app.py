"""`unityvideo app`: a local web page (Gradio) to try every task of a checkpoint.

A request is the same as `unityvideo generate`'s (parsed by its own argument parser, checked by its
`prepare`, run by its `execute`), so the page and the command line cannot drift apart. The page
binds 127.0.0.1 unless told otherwise; uploads are limited in size and length; everything it writes
(uploads included) goes to one temporary folder, removed when the app stops.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from unityvideo.assets import DEFAULT_CHECKPOINT
from unityvideo.cli_args import integer

log = logging.getLogger("unityvideo.app")

TASKS = ("estimate", "t2v", "joint", "control")
MAX_UPLOAD_MB = 64
MAX_UPLOAD_FRAMES = 2000  # a request decodes only the frames it uses, but a longer file is refused outright
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="a local web page to try every task of a checkpoint",
        description="Start a local web page (Gradio) on a checkpoint: pick a task and modalities, type a "
        "prompt, upload a video or render a world clip, and see the input, modalities and output side by "
        "side, with the videos and raw .npz to download.")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"checkpoint folder (default: the shipped {DEFAULT_CHECKPOINT.name})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; another address "
                        "serves the page to the network, with a warning)")
    p.add_argument("--port", type=integer(1), default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=run)


class Session:
    """The loaded pipeline, the app's folder and the cancel flag, shared by the page's callbacks."""

    def __init__(self, checkpoint: Path, device: str = "auto"):
        from unityvideo.models.checkpoint import load_checkpoint_spec

        self.checkpoint = checkpoint
        self.spec = load_checkpoint_spec(checkpoint)
        self.device = device
        self.folder = Path(tempfile.mkdtemp(prefix="unityvideo-app-"))
        self.cancel = threading.Event()
        self._pipe = None
        self._requests = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def pipeline(self):
        if self._pipe is None:
            import torch

            from unityvideo.pipeline import UnityVideoPipeline

            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
            self._pipe = UnityVideoPipeline.from_pretrained(self.checkpoint, device=device)
        return self._pipe

    def generate(self, task: str, modalities: list[str], prompt: str, video: str | None, steps: int,
                 guidance: float | None, ensemble: int, seed: int) -> tuple[str, list[str]]:
        """One request -> (the side-by-side preview video, every file written). ValueError: a bad request."""
        from unityvideo.cli import build_parser
        from unityvideo.pipeline_cli import execute, prepare

        check_upload(video)
        with self._lock:
            self._requests += 1
            out = self.folder / f"request-{self._requests:04d}" / "out.mp4"
        argv = ["generate", "--checkpoint", str(self.checkpoint), "--task", task, "--out", str(out),
                "--steps", str(int(steps)), "--seed", str(int(seed)), "--ensemble", str(int(ensemble))]
        argv += ["--modality", *modalities] if modalities else []
        argv += ["--prompt", prompt] if prompt else []
        argv += ["--input", video] if video and task in ("control", "estimate") else []
        argv += ["--guidance", str(guidance)] if guidance is not None else []
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            raise ValueError(f"not a valid request: {' '.join(argv[1:])}") from None
        request = prepare(args)
        self.cancel.clear()
        written = execute(self.pipeline(), request, args, callback_on_step_end=self._check_cancel)
        preview = next(p for p in written if p.name.endswith(".preview.mp4"))
        return str(preview), [str(p) for p in written]

    def _check_cancel(self, pipe, step, timestep, kwargs):
        if self.cancel.is_set():
            raise Cancelled(f"cancelled at step {step + 1}")
        return None

    def world_clip(self, seed: int, stream: str) -> tuple[str, str]:
        """Render one fresh world clip at the checkpoint's geometry: (its `stream` video, its caption)."""
        from unityvideo.data import read_manifest
        from unityvideo.world.export import ExportSpec, export_world

        out = self.folder / f"world-seed{int(seed)}"
        result = export_world(ExportSpec(out=out, clips=1, frames=self.spec.frames, size=tuple(self.spec.size),
                                         seed=int(seed), fps=int(self.spec.fps), workers=1))
        record = read_manifest(result.manifest)[0]
        path = record.rgb if stream == "rgb" else record.modalities[stream]
        return str(path), record.caption


class Cancelled(RuntimeError):
    pass


def check_upload(video: str | None) -> None:
    """Refuse uploads that are too large or too long, with a message that says the limit."""
    if not video:
        return
    from unityvideo.data.video import VideoReadError, probe_video

    size = os.path.getsize(video)
    if size > MAX_UPLOAD_MB * 2**20:
        raise ValueError(f"the video is {size / 2**20:.0f} MB; this page takes up to {MAX_UPLOAD_MB} MB "
                         "(trim it, or use `unityvideo generate`)")
    try:
        frames = probe_video(video)[0]
    except VideoReadError as err:
        raise ValueError(f"cannot read the uploaded video ({err}); upload an .mp4 or .mkv") from None
    if frames > MAX_UPLOAD_FRAMES:
        raise ValueError(f"the video has {frames} frames; this page takes up to {MAX_UPLOAD_FRAMES} "
                         "(trim it, or use `unityvideo generate`)")


def build_app(session: Session):
    import gradio as gr

    spec = session.spec
    modalities = list(spec.modalities)
    tasks = [t for t in TASKS if t in spec.tasks]

    def on_generate(task, chosen, prompt, video, steps, guidance, ensemble, seed, progress=gr.Progress(track_tqdm=True)):
        try:
            return session.generate(task, list(chosen or []), prompt or "", video, steps,
                                    None if guidance is None or guidance <= 0 else guidance, ensemble, seed)
        except Cancelled as err:
            raise gr.Error(str(err)) from None
        except (ValueError, OSError) as err:  # the request's own one-line error, as the CLI prints it
            raise gr.Error(str(err)) from None

    def on_world(seed, task, chosen):
        stream = chosen[0] if task == "control" and chosen else "rgb"
        return session.world_clip(seed, stream)

    with gr.Blocks(title="UnityVideo") as page:
        gr.Markdown(f"# UnityVideo\nCheckpoint `{session.checkpoint.name}`: {', '.join(modalities)}; "
                    f"{spec.frames} frames of {spec.size[0]}×{spec.size[1]}. **estimate**: video → modalities; "
                    "**t2v**: prompt → video; **joint**: prompt → video + modalities; **control**: a modality "
                    "video (+ prompt) → video.")
        with gr.Row():
            with gr.Column():
                task = gr.Radio(tasks, value=tasks[0], label="task")
                chosen = gr.CheckboxGroup(modalities, value=modalities[:1], label="modalities (control: the "
                                          "uploaded video's modality)")
                prompt = gr.Textbox(label="prompt", placeholder="a red ball rolls to the left")
                # A file, not gr.Video: a video component re-encodes what it cannot play, and a lossy copy of
                # a segmentation or skeleton video would change its colours, hence its labels.
                video = gr.File(label="input video (estimate: RGB; control: the modality video, e.g. a .mkv)",
                                file_types=[".mp4", ".mkv", ".avi", ".mov", ".webm"], type="filepath")
                with gr.Row():
                    world_seed = gr.Number(value=0, precision=0, label="world seed")
                    world = gr.Button("render a world clip as input")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=20, step=1, label="steps")
                    guidance = gr.Number(value=0, label="guidance (0 = the task's default)")
                with gr.Row():
                    ensemble = gr.Slider(1, 8, value=1, step=1, label="ensemble (estimate)")
                    seed = gr.Number(value=0, precision=0, label="seed")
                with gr.Row():
                    run_button = gr.Button("generate", variant="primary")
                    cancel = gr.Button("cancel")
            with gr.Column():
                preview = gr.Video(label="input | modalities | output", autoplay=True)
                files = gr.File(label="videos and raw .npz", file_count="multiple")
        world.click(on_world, [world_seed, task, chosen], [video, prompt])
        run_button.click(on_generate, [task, chosen, prompt, video, steps, guidance, ensemble, seed],
                         [preview, files], api_name="generate")
        cancel.click(lambda: session.cancel.set(), None, None, queue=False)
    return page


def warn_if_public(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return False
    log.warning("serving on %s: anyone who can reach this address can use the page and this machine's "
                "compute (the default, 127.0.0.1, serves this machine only)", host)
    return True


def launch(session: Session, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page; returns the Gradio app (already serving when `block` is False)."""
    warn_if_public(host)
    os.environ["GRADIO_TEMP_DIR"] = str(session.folder / "uploads")  # uploads stay in the app's folder
    page = build_app(session)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                max_file_size=f"{MAX_UPLOAD_MB}mb", allowed_paths=[str(session.folder)])
    return page


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ImportError("the app needs Gradio: pip install 'unityvideo[app]'") from None
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    session = Session(checkpoint, args.device)
    atexit.register(session.close)
    try:
        launch(session, args.host, args.port)
    finally:
        session.close()
    return 0
