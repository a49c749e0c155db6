"""A procedural 3D world rendered by vectorised ray casting, with exact ground truth for every modality.

    clip = generate_clip(base_seed=0, split="train", index=3, frames=16, size=(64, 64))
    scene = sample_scene(clip_seed(0, "train", 3), WorldConfig()); clip = render_clip(scene, 16, (64, 64))

Modules: scene (config, sampling, seeds), physics (rigid bodies), humanoid (skeleton, actions, FK,
keypoints, DensePose parts), camera (paths, intrinsics), raycast (ray-primitive intersection),
render (one clip, all channels), caption (text from the scene graph), clip (the WorldClip record).
"""

from unityvideo.world.camera import CameraSpec
from unityvideo.world.clip import WorldClip
from unityvideo.world.humanoid import ACTIONS, COCO_KEYPOINTS, DENSEPOSE_PARTS, HumanoidSpec
from unityvideo.world.physics import GRAVITY, RigidBody, simulate
from unityvideo.world.render import generate_clip, render_clip
from unityvideo.world.scene import COLOURS, Scene, SceneObject, WorldConfig, clip_seed, sample_scene

__all__ = [
    "ACTIONS", "COCO_KEYPOINTS", "COLOURS", "DENSEPOSE_PARTS", "GRAVITY", "CameraSpec", "HumanoidSpec",
    "RigidBody", "Scene", "SceneObject", "WorldClip", "WorldConfig", "clip_seed", "generate_clip",
    "render_clip", "sample_scene", "simulate",
]
