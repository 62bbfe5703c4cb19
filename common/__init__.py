"""What every experiment shares, in layers (docs/architecture.md): config,
data, distribute, runs, training, deploy, modes; each imports only from the
layers below it.

Importing this package first is what makes the whole project use tf_keras
(Keras 2): TensorFlow Model Optimization only works with it, and its
BackupAndRestore is distribution-aware. The variable must be set before
TensorFlow is first imported, so every entry point (launch.py, the tests)
imports `common` before anything else.
"""

import contextlib
import os
import re
import sys
import tempfile
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probes) is noise for
# users; a caller who wants it can still set the variable explicitly.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Two library warnings whose advice does not apply here: a stage that keeps
# a quantization-aware-trained model keeps it as HDF5 on purpose (TFMOT's
# quantize wrappers do not load back from .keras), and such a model carries
# the input ranges that TFLite's converter says it was not given.
warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file",
                        category=UserWarning)
warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected",
                        category=UserWarning)

# What TensorFlow's native code prints while it loads and looks for devices
# on a machine without GPUs: not errors of the user's run.
_STARTUP_NOISE = re.compile(
    r"cudart_stub|failed call to cuInit|Could not find cuda drivers|"
    r"All log messages before absl::InitializeLog|oneDNN custom operations|"
    r"rebuild TensorFlow with the appropriate compiler flags|"
    r"This TensorFlow binary is optimized|TF-TRT Warning|Unable to register cu(DNN|FFT|BLAS)|"
    r"computation placer already registered|cuda_(dnn|fft|blas)\.cc")


# The terminal's stderr while quiet_native_startup() captures fd 2, so that a
# message that must reach the user (an interrupt) still does.
user_stderr_fd = 2


@contextlib.contextmanager
def quiet_native_startup():
    """Runs the block with the process's stderr captured, then replays it
    without TensorFlow's start-up noise.

    Before the block runs, TensorFlow is imported and its devices listed
    (tf.config.list_physical_devices), inside the capture, since that is
    where its native code prints. File descriptor 2 itself is redirected to
    a temporary file, so native and Python writes to stderr alike are held
    back until the block ends; then every line that does not match
    `_STARTUP_NOISE` is written to the real stderr, in order. stdout is not
    touched, and an exception from the block propagates (after the replay).
    While the block runs, `user_stderr_fd` is a duplicate of the real
    stderr, for a message that must reach the user at once (launch.py's
    interrupt handler). With TF_CPP_MIN_LOG_LEVEL=0 (the user asked for
    TensorFlow's messages) nothing is captured and TensorFlow is not
    imported here.

    Yields:
        None, once; the block runs with stderr captured.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    global user_stderr_fd
    sys.stderr.flush()
    fd = sys.stderr.fileno()
    saved = os.dup(fd)
    user_stderr_fd = saved
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), fd)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            user_stderr_fd = fd
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _STARTUP_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
