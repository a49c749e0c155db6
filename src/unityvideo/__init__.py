"""UnityVideo: one video diffusion transformer for RGB and five visual modalities.

Rooms, upstream to downstream: `modalities` (registry and encodings), `world` (procedural scenes with
exact ground truth), `data` (manifests, video IO, datasets), `models`, `flow`, `training`, `pipeline`,
`eval`. See the README for the command line.
"""

__version__ = "0.1.0"
