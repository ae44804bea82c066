"""Files: atomic writes and output checks (:mod:`.files`), the checkpoint folder lock (:mod:`.lock`), tensor
files read without executing anything (:mod:`.tensors`), checkpoints (:mod:`.checkpoints`) and image grids
(:mod:`.images`).

Everything here writes through :func:`atomic_write` (a fresh, exclusively created temporary file beside the
destination, renamed over it once complete) and reads untrusted files without executing anything in them:
safetensors for weights, ``torch.load(weights_only=True)`` for the optimizer state, JSON for configs, with
every field and size checked before anything is built from it.
"""

from .checkpoints import (MAX_CONFIG_BYTES, checkpoint_dir, export_checkpoint, load_checkpoint, load_trainer_state,
                          read_checkpoint_config, save_checkpoint)
from .files import CACHE_ENV, atomic_write, cache_dir, check_output_dir, check_output_file, read_capped, read_json
from .images import save_image_grid
from .lock import checkpoint_lock
from .tensors import safe_torch_load

__all__ = ["atomic_write", "check_output_file", "check_output_dir", "read_capped", "read_json", "checkpoint_lock",
           "safe_torch_load", "save_image_grid", "save_checkpoint", "load_checkpoint", "read_checkpoint_config",
           "load_trainer_state", "export_checkpoint", "checkpoint_dir", "MAX_CONFIG_BYTES", "cache_dir", "CACHE_ENV"]
