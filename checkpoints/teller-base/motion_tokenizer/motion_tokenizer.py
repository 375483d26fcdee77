"""`MotionTokenizer` for `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`: the class of the
installed `teller_pipeline` package, which is all this file runs."""

try:
    from teller_pipeline.models.motion_tokenizer import MotionTokenizer
except ImportError as error:
    raise ImportError(
        "this checkpoint runs on the teller_pipeline package; in the project's source: "
        "pip wheel . --no-deps -w dist && pip install dist/teller_pipeline-*.whl"
    ) from error

__all__ = ["MotionTokenizer"]
