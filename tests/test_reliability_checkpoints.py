"""Issue 8, checkpoints and files: nothing lost, nothing silent.

Writes cannot be redirected by planted links and never leave half a file; a save deletes only the files
the previous checkpoint recorded; a folder has one writer at a time; a full disk or a SIGKILL leaves the
previous checkpoint loadable; config.json is checked (names, hash, every field, sizes) before anything is
opened, built or allocated; pickled code is refused in scoregen's words; training never silently trains
over, past, or on other data than a checkpoint.
"""

import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
import torch

import scoregen as sg
import scoregen.io as sio
from scoregen.errors import DiskFullError, FolderInUseError
from scoregen.io import checkpoints
from scoregen.networks import MLPScoreNet
from scoregen.training import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sg.__file__)))  # the checkout under test, for subprocesses
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def _net(hidden=16, seed=0):
    torch.manual_seed(seed)
    return MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=hidden)


def _data(n=256, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


CONFIG = TrainConfig("ddpm", steps=4, batch_size=16, checkpoint_every=2)


def _save(directory, step=1, seed=0):
    net = _net(seed=seed)
    state = {"step": step, "note": torch.arange(3)}
    sio.save_checkpoint(directory, net, step=step, ema=_net(seed=seed + 1), trainer_state=state, meta={"x": 1})
    return net


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _contents(directory):
    """Every visible file's bytes (the lock file aside), for checking that nothing changed."""
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))
            if name != ".scoregen.lock" and (directory / name).is_file()}


def _edit(directory, change, version=None):
    """Apply ``change`` to config.json and seal it again (a new config_sha256), as a deliberate editor would;
    ``version=1`` writes a legacy config without a hash."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    sealed = config.get("config_sha256")
    replaced = change(config)  # edits in place, or returns what replaces the whole config
    config = config if replaced is None else replaced
    if isinstance(config, dict):
        if version == 1:
            config["version"] = 1
            config.pop("config_sha256", None)
        elif sealed is not None and config.get("config_sha256") == sealed:  # unless the edit was to the hash itself
            config["config_sha256"] = checkpoints._config_sha256(config)
    path.write_text(json.dumps(config))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ 1. atomic writes
def test_a_planted_symlink_cannot_redirect_a_write(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    # the temporary name the old atomic_path predicted, and the first name mkstemp will try (forced here)
    (out / f".grid.txt.tmp{os.getpid()}").symlink_to(victim)
    (out / ".sg-planted.tmp").symlink_to(victim)
    (out / ".sg-ckpt-planted.tmp").symlink_to(victim)
    counter, tried = itertools.count(), []

    def names():
        for name in itertools.chain(["planted"], (f"fresh{next(counter)}" for _ in itertools.count())):
            tried.append(name)
            yield name

    monkeypatch.setattr(tempfile, "_get_candidate_names", names)
    with sio.atomic_write(out / "grid.txt") as f:
        f.write("new")
    _save(out / "ck")  # the checkpoint writer too
    (out / "ck" / ".sg-ckpt-planted.tmp").symlink_to(victim)
    _save(out / "ck", step=2)
    assert victim.read_text() == "precious"
    assert (out / "grid.txt").read_text() == "new" and not (out / "grid.txt").is_symlink()
    assert tried.count("planted") >= 9  # every write tried the planted name first; 5 of them met a link there
    for link in (out / f".grid.txt.tmp{os.getpid()}", out / ".sg-planted.tmp", out / "ck" / ".sg-ckpt-planted.tmp"):
        assert os.readlink(link) == str(victim)
    assert sio.read_checkpoint_config(out / "ck")["step"] == 2


def test_a_failed_write_leaves_nothing_and_a_long_name_is_written(tmp_path):
    long_name = tmp_path / ("a" * 245 + ".npy")  # 249 bytes: the old hidden temp name had 255 + more
    with sio.atomic_write(long_name, "wb") as f:
        f.write(b"x" * 10)
    assert long_name.read_bytes() == b"x" * 10
    with pytest.raises(RuntimeError, match="boom"):
        with sio.atomic_write(tmp_path / "b.txt") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == [long_name.name]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write to: a read-only tmpfs as root, else a folder without write permission."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True).returncode:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
        yield path
        subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_check_output_file_refuses_what_cannot_be_written(tmp_path, read_only_dir):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "folder.npy").mkdir()
    cases = [
        (tmp_path / "folder.npy", None, "is a folder, not a file"),
        (tmp_path / "a-file" / "x.npy", None, "a-file' is a file, not a folder"),
        (tmp_path / "a-file" / "sub" / "x.npy", None, "a-file' is a file, not a folder"),
        (read_only_dir / "x.npy", None, "is not writable"),
        (read_only_dir / "new" / "x.npy", None, "is not writable"),
        (tmp_path / ("n" * 252 + ".npy"), None, "256 bytes long, more than the 255"),
        ("", None, "does not name a file"),
        (str(tmp_path) + os.sep, None, "does not name a file"),
        (tmp_path / "x.txt", ".npy", "must name a .npy file"),
    ]
    for path, suffix, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            sio.check_output_file(path, suffix)
        assert str(path) in str(info.value) or path == ""
    for ok in (tmp_path / "x.npy", tmp_path / "new" / "deeper" / "X.NPY", tmp_path / "a-file"):
        sio.check_output_file(ok, ".npy" if ok.suffix.lower() == ".npy" else None)
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_output_dir_refuses_what_cannot_be_written(tmp_path, read_only_dir):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = [
        (tmp_path / "a-file", "is a file, not a folder"),
        (tmp_path / "dangling", "is a link to nothing"),
        (tmp_path / "a-file" / "ck", "a-file' is a file, not a folder"),
        (read_only_dir, "is not writable"),
        (read_only_dir / "ck", "is not writable"),
        (tmp_path / ("d" * 256), "256 bytes long"),
        ("", "empty"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            sio.check_output_dir(path)
    sio.check_output_dir(tmp_path)
    sio.check_output_dir(tmp_path / "new" / "ck")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------- 2. delete only what was recorded
def test_a_save_deletes_only_the_files_the_previous_checkpoint_recorded(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "weights-best.safetensors").write_bytes(b"the user's best weights")
    (ck / "ema-notes.txt").write_text("notes")
    (ck / "trainer-logs").mkdir()
    (ck / "trainer-logs" / "log.txt").write_text("log")
    _save(ck, step=1)
    net = _save(ck, step=2, seed=5)
    _save(ck, step=3, seed=5)
    net = _save(ck, step=4, seed=7)
    visible = sorted(n for n in os.listdir(ck) if not n.startswith("."))
    assert visible == ["config.json", "ema-4.safetensors", "ema-notes.txt", "trainer-4.pt", "trainer-logs",
                       "weights-4.safetensors", "weights-best.safetensors"]
    assert (ck / "weights-best.safetensors").read_bytes() == b"the user's best weights"
    assert (ck / "trainer-logs" / "log.txt").read_text() == "log"
    assert _same(sio.load_checkpoint(ck, ema=False)[0], net)


def test_saving_a_step_again_never_rewrites_a_file_the_previous_checkpoint_records(tmp_path):
    ck = tmp_path / "ck"
    sio.save_checkpoint(ck, _net(seed=1), step=5)
    weights = ck / "weights-5.safetensors"
    first, inode = weights.read_bytes(), weights.stat().st_ino  # an atomic write would make a new file (inode)
    sio.save_checkpoint(ck, _net(seed=1), step=5)  # the same bytes again (re-exporting a build): reused as they are
    assert weights.stat().st_ino == inode and weights.read_bytes() == first
    other = _net(seed=2)
    sio.save_checkpoint(ck, other, step=5)  # other bytes at the same step: a new name, the recorded file untouched
    assert sorted(n for n in os.listdir(ck) if not n.startswith(".")) == ["config.json", "weights-5-2.safetensors"]
    assert _same(sio.load_checkpoint(ck)[0], other)


def test_a_file_with_the_name_a_save_chooses_but_not_recorded_is_replaced(tmp_path):
    ck = tmp_path / "ck"
    _save(ck, step=1)
    (ck / "weights-2.safetensors").write_bytes(b"not recorded by the step-1 checkpoint")
    net = _save(ck, step=2, seed=4)  # as save_checkpoint's docstring says: that name is this save's to write
    assert _same(sio.load_checkpoint(ck, ema=False)[0], net)


# ------------------------------------------------------------------ 3 + 5. the lock, and SIGKILL in a save
WORKER = textwrap.dedent("""
    import itertools, os, sys, time
    import torch
    import scoregen as sg
    from scoregen.io import checkpoints
    from scoregen.networks import MLPScoreNet
    from scoregen.training import TrainConfig, train

    out, ready = sys.argv[1], sys.argv[2]
    calls, real = itertools.count(1), checkpoints._write_bytes

    def stalling(f, data):
        # Each save writes weights, ema, trainer, config.json: the 6th file is the EMA of the save at step 4.
        # Its weights have reached the disk; half the EMA reaches its temporary file, then we hang.
        if next(calls) == 6:
            f.write(data[: len(data) // 2])
            f.flush()
            open(ready, "w").close()
            time.sleep(600)
        real(f, data)

    checkpoints._write_bytes = stalling
    torch.set_num_threads(1)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=16)
    train(net, x, None, TrainConfig("ddpm", steps=6, batch_size=16, checkpoint_every=2), out, progress=False)
""")


def _wait_for(path, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the worker never reached the save (exit {proc.poll()}): {proc.stderr.read().decode()}")
        time.sleep(0.01)


def test_a_trainer_killed_inside_a_save_holds_the_folder_then_leaves_a_resumable_checkpoint(tmp_path):
    out, ready = tmp_path / "run", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(out), str(ready)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(ready, proc)
        before = _contents(out)
        # a second process (this one) is refused, naming the holder, and changes nothing
        config = TrainConfig("ddpm", steps=6, batch_size=16, checkpoint_every=2)
        with pytest.raises(FolderInUseError, match=rf"in use by another scoregen process \(pid {proc.pid} on .*, "
                                                   r"running `.*` since .*\): wait for it to finish, or choose another"):
            train(_net(), _data(), None, config, out, resume=True, progress=False)
        with pytest.raises(FolderInUseError, match=f"pid {proc.pid}"):
            sio.save_checkpoint(out, _net(), step=9)
        assert _contents(out) == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(n for n in os.listdir(out) if n.startswith(".sg-"))
    assert len(leftovers) == 1 and "weights-4.safetensors" in os.listdir(out)  # what the kill left behind
    assert sio.read_checkpoint_config(out)["step"] == 2  # the previous checkpoint, whole
    sio.load_checkpoint(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's arithmetic, for a bit-exact comparison
    try:
        resumed, straight = _net(), _net()
        summary = train(resumed, _data(), None, config, out, resume=True, progress=False)  # the lock died with the worker
        train(straight, _data(), None, config, tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert (summary["start_step"], summary["end_step"]) == (2, 6) and _same(resumed, straight)
    assert sorted(n for n in os.listdir(out) if n != ".scoregen.lock") == \
        ["config.json", "ema-6.safetensors", "trainer-6.pt", "weights-6.safetensors"]  # the leftovers are gone


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path):
    probe = [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                                   "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / ".scoregen.lock")]
    held = []

    def callback(step, loss):
        if step in (1, 3):  # before the first save, and between saves
            held.append(subprocess.run(probe, capture_output=True).returncode != 0)

    train(_net(), _data(), None, CONFIG, tmp_path, progress=False, callback=callback)
    assert held == [True, True]
    assert subprocess.run(probe, capture_output=True).returncode == 0


def test_two_threads_of_one_process_cannot_write_one_folder(tmp_path):
    out, inside, release, failures = tmp_path / "run", threading.Event(), threading.Event(), []

    def first():
        def hold(step, loss):  # after the first step, before the first save: the folder is this thread's
            if step == 1:
                inside.set()
                release.wait(60)
        try:
            train(_net(), _data(), None, CONFIG, out, overwrite=True, progress=False, callback=hold)
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=first, name="first-trainer")
    thread.start()
    try:
        assert inside.wait(60)
        with pytest.raises(FolderInUseError, match=rf"^{re.escape(str(out))} is held by another thread of this process "
                                                   r"\('first-trainer', writing checkpoints there\): wait for it"):
            train(_net(seed=1), _data(), None, CONFIG, out, overwrite=True, progress=False)
        with pytest.raises(FolderInUseError, match="another thread of this process"):
            sio.save_checkpoint(out, _net(), step=9)
    finally:
        release.set()
        thread.join(60)
    assert not failures and sio.read_checkpoint_config(out)["step"] == 4  # the first trainer was not disturbed
    with sio.checkpoint_lock(out):  # released: this thread may hold it now, reentrantly
        sio.save_checkpoint(out, _net(), step=5)
    assert sio.read_checkpoint_config(out)["step"] == 5


def test_files_get_the_umask_mode_without_the_umask_being_changed(tmp_path, monkeypatch):
    try:
        with open("/proc/self/status", "rb") as f:
            shown = b"Umask:" in f.read()
    except OSError:
        shown = False
    if not shown:
        pytest.skip("the umask can be read only by setting it on this system")
    old = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("os.umask was called: other threads would create files with a wrong mode meanwhile")

        monkeypatch.setattr(os, "umask", refuse)
        with sio.atomic_write(tmp_path / "a.txt") as f:
            f.write("x")
        _save(tmp_path / "ck")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "ck" / "weights-1.safetensors").stat().st_mode) == 0o640


# ----------------------------------------------------------------------------------------- 4. full disk
@pytest.mark.parametrize("failing", [1, 2, 3, 4], ids=["weights", "ema", "trainer", "config"])
def test_a_full_disk_removes_what_the_save_wrote_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    ck = tmp_path / "ck"
    _save(ck, step=1)
    before = _contents(ck)
    calls, real = itertools.count(1), checkpoints._write_bytes

    def full(f, data):
        if next(calls) == failing:  # half the file reaches the disk, then it is full
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(checkpoints, "_write_bytes", full)
    with pytest.raises(DiskFullError, match=rf"^no space left on the device holding {re.escape(str(ck))} \([0-9.]+ MB free\): the "
                                            "checkpoint for step 2 was not written; the previous checkpoint at step 1 "
                                            "is intact$") as info:
        _save(ck, step=2, seed=3)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert _contents(ck) == before  # no orphan, no temporary file, the previous checkpoint byte for byte
    sio.load_checkpoint(ck)
    calls = itertools.count(1)
    with pytest.raises(DiskFullError, match="step 1 was not written; there is no previous checkpoint$"):
        _save(tmp_path / "fresh", step=1)
    assert os.listdir(tmp_path / "fresh") == [".scoregen.lock"]


def test_a_real_full_disk_during_training_then_resume_once_space_is_freed(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and permission to mount a small tmpfs")
    try:
        out = disk / "run"
        x, config = _data(), TrainConfig("ddpm", steps=2, batch_size=16, checkpoint_every=2)
        train(_net(hidden=32), x, None, config, out, progress=False)
        before = _contents(out)
        size = sum(len(b) for b in before.values())
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave a third of one checkpoint free
            f.write(b"\0" * (shutil.disk_usage(disk).free - size // 3))
        longer = TrainConfig("ddpm", steps=4, batch_size=16, checkpoint_every=2)
        with pytest.raises(DiskFullError, match=rf"device holding {re.escape(str(out))} .*: the checkpoint for step 4 was not "
                                                "written; the previous checkpoint at step 2 is intact"):
            train(_net(hidden=32), x, None, longer, out, resume=True, progress=False)
        assert _contents(out) == before
        os.remove(filler)
        resumed, straight = _net(hidden=32), _net(hidden=32)
        train(resumed, x, None, longer, out, resume=True, progress=False)
        train(straight, x, None, longer, tmp_path / "straight", progress=False)
        assert _same(resumed, straight) and sio.read_checkpoint_config(out)["step"] == 4
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------- 6. files outside the folder, links
@pytest.mark.parametrize("name", ["/etc/passwd", "{outside}", "../outside.safetensors", "sub/w.safetensors",
                                  "..", ".", "", "w\0.safetensors", "config.json", 7, ".sg-ckpt-1.tmp"])
def test_config_cannot_name_a_file_outside_its_folder_or_a_temporary_one(tmp_path, name):
    ck = tmp_path / "ck"
    _save(ck)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((ck / "weights-1.safetensors").read_bytes())  # loadable: only the name may refuse it
    (ck / "sub").mkdir()
    (ck / "sub" / "w.safetensors").write_bytes(outside.read_bytes())
    (ck / ".sg-ckpt-1.tmp").write_bytes(outside.read_bytes())  # the next save would sweep it away as a leftover
    name = str(outside) if name == "{outside}" else name

    def point(config):
        config["files"]["weights"]["name"] = name

    _edit(ck, point)
    with pytest.raises(ValueError, match=r"files\.weights\.name.* (must be a plain file name inside the checkpoint "
                                         r"folder|must be a non-empty string|must not be config\.json or \.scoregen\.lock, "
                                         r"start with \.sg- \(scoregen's temporary files\))"):
        sio.load_checkpoint(ck)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_a_checkpoint_file_that_is_a_link_or_not_a_regular_file_is_refused(tmp_path, kind):
    ck = tmp_path / "ck"
    _save(ck)
    weights = ck / "weights-1.safetensors"
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes(weights.read_bytes())
    weights.unlink()
    if kind == "symlink":
        weights.symlink_to(copy)  # the same bytes: only the link may refuse it
    elif kind == "fifo":
        os.mkfifo(weights)  # reading it would block forever
    else:
        weights.mkdir()
    with pytest.raises(ValueError, match="is a symbolic link|is not a regular file"):
        sio.load_checkpoint(ck)


FIFO_READERS = textwrap.dedent("""
    import json, sys
    from scoregen.interop.diffusers import schedule_from_scheduler
    from scoregen.interop.ncsnv2 import ncsnv2_config
    from scoregen.io import read_json
    from scoregen.targets import load_target

    fifo, results = sys.argv[1], {}
    for case, read in [("target", load_target), ("diffusers", schedule_from_scheduler), ("ncsnv2", ncsnv2_config),
                       ("read_json", lambda path: read_json(path, 1000, "a test file"))]:
        try:
            read(fifo)
            results[case] = ("read", "")
        except Exception as e:
            results[case] = (type(e).__name__, str(e))
    print(json.dumps(results))
""")


def test_a_fifo_given_as_a_target_or_config_file_is_refused_instead_of_blocking(tmp_path):
    pytest.importorskip("yaml")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer that never comes
    run = subprocess.run([sys.executable, "-c", FIFO_READERS, str(fifo)], env=ENV, capture_output=True, text=True,
                         timeout=60)  # about 3 s
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.splitlines()[-1])
    for case in ("target", "ncsnv2", "read_json", "diffusers"):
        assert results[case][0] == "ValueError" and f"{fifo}" in results[case][1], (case, results[case])
        assert "is not a regular file" in results[case][1], (case, results[case])


def test_a_file_removed_while_a_checkpoint_is_read_says_a_trainer_may_have_replaced_it(tmp_path):
    ck = tmp_path / "ck"
    _save(ck, step=1)
    stale = sio.read_checkpoint_config(ck)  # a reader has read config.json ...
    _save(ck, step=2, seed=3)  # ... when a trainer saves the next checkpoint, deleting the step-1 files
    replaced = r"but the file is missing: a trainer may have replaced this checkpoint while it was read \(try again\)"
    with pytest.raises(ValueError, match=r"records trainer-1.pt \(trainer\) " + replaced):
        sio.load_trainer_state(ck, stale)
    with pytest.raises(ValueError, match=r"records weights-1.safetensors \(weights\) " + replaced):
        checkpoints.load_weights(_net(), str(ck), stale, "weights")


def test_weights_are_loaded_from_the_bytes_whose_hash_was_checked(tmp_path):
    ck = tmp_path / "ck"
    _save(ck, step=1)
    config = sio.read_checkpoint_config(ck)
    # between reading config.json and loading, other weights of the same shapes appear under the recorded name
    sio.save_checkpoint(tmp_path / "other", _net(seed=9), step=1)
    shutil.copyfile(tmp_path / "other" / "weights-1.safetensors", ck / "weights-1.safetensors")
    net = _net(seed=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"weights-1.safetensors is truncated or was modified \(its sha256 does not "
                                         r"match config.json\)"):
        checkpoints.load_weights(net, str(ck), config, "weights")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing was loaded


# ------------------------------------------------------------------------------ 7. config.json's hash
def test_an_edited_config_is_refused_and_version_1_still_loads(tmp_path):
    ck = tmp_path / "ck"
    net = _save(ck)
    config = json.loads((ck / "config.json").read_text())
    body = {k: v for k, v in config.items() if k != "config_sha256"}  # the documented rule: canonical JSON, no hash
    assert config["version"] == 2
    assert config["config_sha256"] == hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (ck / "config.json").write_text((ck / "config.json").read_text().replace('"step": 1', '"step": 7'))
    with pytest.raises(ValueError, match=r"config.json was modified after it was written \(its content hash does not match"):
        sio.load_checkpoint(ck)
    _edit(ck, lambda c: None, version=1)  # a checkpoint of scoregen before the hash: accepted as it is
    loaded, config = sio.load_checkpoint(ck, ema=False)
    assert config["version"] == 1 and config["step"] == 7 and _same(loaded, net)
    for name in sg.pretrained_names():
        assert sio.read_checkpoint_config(sio.checkpoint_dir(name))["version"] == 2


# ---------------------------------------------------------------- 8. every field of config.json checked
def _set(path, value):
    def change(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


BAD_CONFIGS = {
    "not-an-object": (lambda c: [1, 2], "not a scoregen checkpoint config"),
    "format": (_set("format", "other"), "not a scoregen checkpoint config"),
    "version-bool": (_set("version", True), "checkpoint version True"),
    "version-str": (_set("version", "2"), "checkpoint version '2'"),
    "version-3": (_set("version", 3), "checkpoint version 3"),
    "hash-format": (lambda c: c.update(config_sha256="ABC"), "'config_sha256' must be 64 lowercase hex"),
    "no-network": (_set("network", KeyError), "'network' must be an object"),
    "network-list": (_set("network", []), "'network' must be an object"),
    "class-type": (_set("network.class", 5), "'network.class' must be a network class scoregen knows .*got 5"),
    "class-unknown": (_set("network.class", "Evil"), "'network.class' must be a network class .*MLPScoreNet.*got 'Evil'"),
    "net-config": (_set("network.config", [1]), "'network.config' must be an object"),
    "step-negative": (_set("step", -1), "'step' must be a non-negative integer"),
    "step-float": (_set("step", 1.5), "'step' must be a non-negative integer"),
    "step-bool": (_set("step", True), "'step' must be a non-negative integer"),
    "no-step": (_set("step", KeyError), "'step' must be a non-negative integer"),
    "meta": (_set("meta", None), "'meta' must be an object"),
    "files-list": (_set("files", []), "'files' must be an object naming at least the 'weights' file"),
    "no-weights": (_set("files.weights", KeyError), "'files' must be an object naming at least the 'weights'"),
    "entry": (_set("files.weights", "weights-1.safetensors"), "'files.weights' must be an object"),
    "kind": (lambda c: c["files"].update(extra=c["files"]["ema"]), "'files' kind 'extra' must be one of"),
    "sha-upper": (lambda c: c["files"]["weights"].update(sha256=c["files"]["weights"]["sha256"].upper()),
                  "'files.weights.sha256' must be 64 lowercase hex"),
    "sha-missing": (_set("files.weights.sha256", KeyError), "'files.weights.sha256' must be 64 lowercase hex"),
    "same-name": (lambda c: c["files"]["ema"].update(c["files"]["weights"]), "must differ from the other files"),
    "unknown-arg": (_set("network.config.hiddn", 32), r"MLPScoreNet config does not fit MLPScoreNet\(dim, schedule, "
                                                       r".*\): got an unexpected keyword argument 'hiddn'"),
    "missing-arg": (_set("network.config.dim", KeyError), "MLPScoreNet config does not fit .*missing a required argument: 'dim'"),
    "depth-float": (_set("network.config.depth", 2.0), r"depth must be an integer in \[0, 1024\], got 2.0 of type float"),
    "hidden-overflow": (_set("network.config.hidden", 2**70), r"hidden must be an integer in \[1, 16777216\]"),
    "emb-odd": (_set("network.config.emb_dim", 7), "emb_dim must be even"),
    "hidden-str": (_set("network.config.hidden", "16"), r"hidden must be an integer in \[1, 16777216\], got '16' of type str"),
    "depth-huge": (_set("network.config.depth", 10**7), r"depth must be an integer in \[0, 1024\]"),
    "schedule-list": (_set("network.config.schedule", []), "a schedule config is a dict"),
    "schedule-type": (_set("network.config.schedule.type", ["x"]), "unknown schedule type"),
    "schedule-field": (_set("network.config.schedule.bogus", 1), "bad DiscreteVP config"),
    "T-float": (_set("network.config.schedule.T", 1000.0), r"T \(the number of levels\) must be an integer"),
    "first-index": (_set("network.config.schedule.first_index", 0.5), "first_index .* must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_every_field_of_config_json_is_checked(tmp_path, case):
    change, message = BAD_CONFIGS[case]
    ck = tmp_path / "ck"
    _save(ck)
    _edit(ck, change)
    with pytest.raises(ValueError, match=message) as info:
        sio.load_checkpoint(ck)
    assert str(ck / "config.json") in str(info.value)  # the file, besides the field


def test_an_oversized_or_deeply_nested_config_is_refused_before_parsing(tmp_path):
    ck = tmp_path / "ck"
    _save(ck)
    (ck / "config.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        sio.load_checkpoint(ck)
    with open(ck / "config.json", "wb") as f:
        f.write(b'{"format": "scoregen-checkpoint", "pad": "' + b" " * (16 * 2**20) + b'"}')
    with pytest.raises(ValueError, match="larger than the 16 MiB a checkpoint's config.json may have"):
        sio.load_checkpoint(ck)


# ------------------------------------------------------------------------------ 9. resource exhaustion
EXHAUST = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
    import yaml  # imported before the clock starts: its import is not the time of any check
    import scoregen.io as sio
    from scoregen.interop.ncsnv2 import load_ncsnv2
    results = {}
    for case, args in json.loads(sys.argv[1]).items():
        start = time.monotonic()
        try:
            if case.startswith("ncsnv2"):
                load_ncsnv2(*args)
            else:
                sio.load_checkpoint(args)
            outcome = ("loaded", "")
        except BaseException as e:
            outcome = (type(e).__name__, str(e)[:300])
        results[case] = (*outcome, time.monotonic() - start)
    print(json.dumps(results))
""")


def test_edited_configs_that_would_allocate_gigabytes_are_refused_first(tmp_path):
    yaml = pytest.importorskip("yaml")
    from scoregen.networks import NCSNv2

    cases, expected = {}, {}
    for case, change, message in [
        ("T-float", _set("network.config.schedule.T", 1e9), r"T \(the number of levels\) must be an integer"),
        ("T-huge", _set("network.config.schedule.T", 10**9), r"T \(the number of levels\) must be an integer in \[1, 100000\]"),
        ("hidden-huge", _set("network.config.hidden", 40000), r"do not fit .*shape mismatch body.time.0.weight: "
                                                              r"checkpoint \(16, 64\), network \(40000, 64\)"),
    ]:
        _save(tmp_path / case)
        _edit(tmp_path / case, change, version=1)  # legacy (unhashed) configs reach the same checks
        cases[case], expected[case] = str(tmp_path / case), message
    torch.manual_seed(0)
    ncsn = NCSNv2(8, 3, sg.DiscreteVE.geometric(8.0, 0.01, 10), ngf=4)
    torch.save(ncsn.state_dict(), tmp_path / "ncsn.pth")
    config = {"data": {"dataset": "CIFAR10", "image_size": 8, "channels": 3, "logit_transform": False, "rescaled": False},
              "model": {"sigma_begin": 8.0, "sigma_end": 0.01, "num_classes": 10, "sigma_dist": "geometric",
                        "normalization": "InstanceNorm++", "nonlinearity": "elu", "ngf": 4}}
    for case, section, key, value, message in [
        ("ncsnv2-levels", "model", "num_classes", 10**9, r"model.num_classes must be an integer in \[1, 100000\]"),
        ("ncsnv2-ngf", "model", "ngf", 100000, r"model.ngf must be an integer in \[1, 2048\]"),
        ("ncsnv2-size", "data", "image_size", 2**20, r"data.image_size must be an integer in \[1, 4096\]"),
        ("ncsnv2-channels", "data", "channels", 10**5, r"data.channels must be an integer in \[1, 64\]"),
        ("ncsnv2-wide", "model", "ngf", 2000, r"does not fit the NCSNv2 built from the config .*ngf 2000"),
    ]:
        edited = json.loads(json.dumps(config))
        edited[section][key] = value
        (tmp_path / f"{case}.yml").write_text(yaml.safe_dump(edited))
        cases[case], expected[case] = [str(tmp_path / "ncsn.pth"), str(tmp_path / f"{case}.yml")], message
    run = subprocess.run([sys.executable, "-c", EXHAUST, json.dumps(cases)], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.splitlines()[-1])
    for case, message in expected.items():
        kind, text, seconds = results[case]
        assert kind == "ValueError", (case, kind, text)
        assert re.search(message, text), (case, text)
        # Each refusal takes under 0.05 s (2 shared CPU cores); building the network first took seconds and
        # gigabytes (the address-space limit turns those into a MemoryError). 3 s leaves a slow machine 60x.
        assert seconds < 3, (case, seconds)


# ---------------------------------------------------------------------- 10. pickled code is refused
class _Payload:
    """Unpickled without weights_only, this creates the marker file: proof that code would have run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_trainer_state_or_an_ncsnv2_file_is_refused_in_scoregens_words(tmp_path):
    marker = tmp_path / "executed"
    ck = tmp_path / "ck"
    _save(ck)
    trainer = ck / "trainer-1.pt"
    torch.save({"optimizer": _Payload(str(marker)), "step": 1}, trainer)
    _edit(ck, lambda c: c["files"]["trainer"].update(sha256=_sha(trainer)))  # a consistent, deliberate forgery
    with pytest.raises(ValueError, match=r"trainer state .*trainer-1.pt is refused: read with torch.load\(weights_only="
                                         r"True\), which executes nothing, it holds objects other than tensors and plain "
                                         r"containers, such as pickled code \(.*open.*\); nothing in it was executed") as info:
        sio.load_trainer_state(ck, sio.read_checkpoint_config(ck))
    assert "weights_only=False" not in str(info.value)
    evil = tmp_path / "ncsn.pth"
    torch.save([{"w": torch.zeros(1)}, _Payload(str(marker)), 0, 0], evil)
    pytest.importorskip("yaml")
    from scoregen.interop.ncsnv2 import load_ncsnv2

    config = {"data": {"dataset": "CIFAR10", "image_size": 8, "channels": 3, "logit_transform": False, "rescaled": False},
              "model": {"sigma_begin": 8.0, "sigma_end": 0.01, "num_classes": 10, "sigma_dist": "geometric",
                        "normalization": "InstanceNorm++", "nonlinearity": "elu", "ngf": 4}}
    with pytest.raises(ValueError, match="is refused: read with torch.load") as info:
        load_ncsnv2(evil, config)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()
    torch.load(trainer, weights_only=False)  # what plain unpickling does: runs the payload
    assert marker.exists()


# ----------------------------------------------------------------------------------------- 11. trainer
def test_training_into_a_checkpoint_needs_resume_or_overwrite(tmp_path):
    x = _data()
    summary = train(_net(), x, None, CONFIG, tmp_path, progress=False)
    assert {k: summary[k] for k in ("steps", "start_step", "end_step", "out_dir")} == \
        {"steps": 4, "start_step": 0, "end_step": 4, "out_dir": str(tmp_path)} and summary["running_loss"] > 0
    (tmp_path / "notes.txt").write_text("mine")
    before = _contents(tmp_path)
    with pytest.raises(FileExistsError, match=rf"^{re.escape(str(tmp_path))} already holds a checkpoint \(step 4\): pass --resume "
                                              r"\(resume=True\) to continue it, or --overwrite \(overwrite=True\) to replace it$"):
        train(_net(), x, None, CONFIG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="give one of them"):
        train(_net(), x, None, CONFIG, tmp_path, resume=True, overwrite=True, progress=False)
    assert _contents(tmp_path) == before
    fresh = _net(seed=3)
    short = TrainConfig("ddpm", steps=2, batch_size=16, checkpoint_every=2)
    summary = train(fresh, x, None, short, tmp_path, overwrite=True, progress=False)
    assert (summary["start_step"], summary["end_step"]) == (0, 2)
    assert sorted(os.listdir(tmp_path)) == [".scoregen.lock", "config.json", "ema-2.safetensors", "notes.txt",
                                            "trainer-2.pt", "weights-2.safetensors"]
    assert _same(sio.load_checkpoint(tmp_path, ema=False)[0], fresh)


def test_resume_refuses_other_data_and_warns_without_a_fingerprint(tmp_path):
    x = _data()
    train(_net(), x, None, TrainConfig("ddpm", steps=2, batch_size=16, checkpoint_every=2), tmp_path, progress=False)
    fingerprint = sio.read_checkpoint_config(tmp_path)["meta"]["data_fingerprint"]
    assert fingerprint == {"x_shape": [256, 2], "x_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
                           "y_shape": None, "y_sha256": None}
    other = x.clone()
    other[17, 1] += 1e-3
    for data, labels in ((other, None), (x[:200], None), (x, torch.zeros(256, dtype=torch.long))):
        with pytest.raises(ValueError, match=r"cannot resume: the checkpoint was trained on other data \(x of shape "
                                             r"\[256, 2\] \(sha256 [0-9a-f]{12}\.\.\.\), no labels; the data given: "):
            train(_net(), data, labels, CONFIG, tmp_path, resume=True, progress=False)
    _edit(tmp_path, _set("meta.data_fingerprint", KeyError))
    with pytest.warns(UserWarning, match="records no fingerprint of its training data"):
        summary = train(_net(), x, None, CONFIG, tmp_path, resume=True, progress=False)
    assert (summary["start_step"], summary["end_step"]) == (2, 4)


def test_resume_past_or_at_the_requested_steps_says_what_happened(tmp_path):
    x = _data()
    train(_net(), x, None, CONFIG, tmp_path, progress=False)
    before = _contents(tmp_path)
    short = TrainConfig("ddpm", steps=2, batch_size=16, checkpoint_every=2)
    with pytest.raises(ValueError, match=rf"the checkpoint in {re.escape(str(tmp_path))} is at step 4, past the requested 2 steps; "
                                         r"to train it further ask for more than 4 steps$"):
        train(_net(), x, None, short, tmp_path, resume=True, progress=False)
    summary = train(_net(), x, None, CONFIG, tmp_path, resume=True, progress=False)
    assert (summary["steps"], summary["start_step"], summary["end_step"]) == (4, 4, 4)
    assert _contents(tmp_path) == before  # nothing trained, nothing written


def test_an_exported_checkpoint_cannot_be_resumed_and_says_why(tmp_path):
    train(_net(), _data(), None, CONFIG, tmp_path / "run", progress=False)
    sio.export_checkpoint(tmp_path / "run", tmp_path / "export")
    with pytest.raises(ValueError, match="has no ema file .*exported checkpoint"):
        train(_net(), _data(), None, TrainConfig("ddpm", steps=8, batch_size=16, checkpoint_every=2),
              tmp_path / "export", resume=True, progress=False)


def test_a_checkpoint_cannot_be_exported_into_its_own_folder(tmp_path):
    train(_net(), _data(), None, CONFIG, tmp_path / "run", progress=False)
    (tmp_path / "link").symlink_to(tmp_path / "run")
    before = _contents(tmp_path / "run")
    for dst in (tmp_path / "run", tmp_path / "link", str(tmp_path / "run") + "/."):
        with pytest.raises(ValueError, match=r"they are the same folder, and the export would replace its checkpoint, "
                                             "deleting the EMA weights and trainer state a resume needs"):
            sio.export_checkpoint(tmp_path / "run", dst)
    assert _contents(tmp_path / "run") == before


@pytest.mark.parametrize("change, message", [
    ({"step": 3}, "it is at step 3, config.json says 4"),
    ({"running_loss": "low"}, "running loss 'low'"),
    ({"torch_rng": torch.zeros(3, dtype=torch.uint8)}, r"torch_rng is not an RNG state of \d+ bytes"),
    ({"optimizer": {"state": {}, "param_groups": []}}, "ValueError: "),
], ids=["step", "running-loss", "rng", "optimizer"])
def test_a_trainer_state_that_does_not_fit_is_refused_before_the_rng_is_restored(tmp_path, change, message):
    train(_net(), _data(), None, CONFIG, tmp_path, progress=False)
    config = sio.read_checkpoint_config(tmp_path)
    trainer = tmp_path / config["files"]["trainer"]["name"]
    torch.save({**sio.load_trainer_state(tmp_path, config), **change}, trainer)
    _edit(tmp_path, lambda c: c["files"]["trainer"].update(sha256=_sha(trainer)))  # a consistent forgery
    longer = TrainConfig("ddpm", steps=8, batch_size=16, checkpoint_every=2)
    with pytest.raises(ValueError, match=rf"the trainer state in {re.escape(str(trainer))} does not fit this training "
                                         rf"run \({message}"):
        train(_net(), _data(), None, longer, tmp_path, resume=True, progress=False)
    after = torch.get_rng_state()
    torch.manual_seed(longer.seed)  # what train() set before resuming; the checkpoint's state was never applied
    assert torch.equal(after, torch.get_rng_state())


@pytest.mark.parametrize("field, value", [
    ("steps", True), ("steps", 2.0), ("steps", 0), ("batch_size", "16"), ("checkpoint_every", 1.5), ("warmup", -1),
    ("seed", -1), ("seed", 2**63), ("lr", float("nan")), ("lr", float("inf")), ("lr", 0), ("lr", True),
    ("grad_clip", 0.0), ("weight_decay", -0.1), ("ema_decay", 1.0), ("label_dropout", 1.0), ("label_dropout", "0.1"),
])
def test_train_config_refuses_wrong_types_and_values_naming_the_field(field, value):
    kwargs = {"steps": 4, **{field: value}}
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig("ddpm", **kwargs)


def test_train_config_takes_numpy_numbers_as_plain_ones():
    import numpy as np

    config = TrainConfig("ddpm", steps=np.int64(4), lr=np.float32(0.5), seed=np.int32(2))
    assert type(config.steps) is int and type(config.seed) is int and type(config.lr) is float
    json.dumps(vars(config))


@pytest.mark.parametrize("x, y, message", [
    (torch.zeros(0, 2), None, r"x must be a tensor of shape \(N, \.\.\.\) with N >= 1 samples, got torch.Size\(\[0, 2\]\)"),
    ([[0.0, 1.0]], None, "x must be a tensor"),
    (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), r"y must be a tensor of shape \(N,\) = \(4,\)"),
])
def test_train_refuses_data_it_cannot_use_before_touching_the_folder(tmp_path, x, y, message):
    with pytest.raises(ValueError, match=message):
        train(_net(), x, y, CONFIG, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
