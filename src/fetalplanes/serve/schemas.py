"""Pydantic response models of the web service, so the OpenAPI schema is fully typed."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error answer: one human-readable sentence."""

    detail: str = Field(description="What went wrong and what is expected instead.")


class ModelRef(BaseModel):
    name: str
    version: str
    kind: Literal["checkpoint", "onnx"] = Field(description="checkpoint (PyTorch) or onnx (ONNX Runtime).")


class ClassProbability(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str = Field(description="Detected from the content: png, jpeg, bmp, tiff or dicom.")
    mode: str = Field(description="Decoded pixel mode (L, I;16, RGB, ...).")


class Explanation(BaseModel):
    available: bool
    method: Optional[str] = Field(default=None, description="CAM method (the checkpoint's explain setting), e.g. gradcam or layercam.")
    overlay_png_base64: Optional[str] = Field(
        default=None, description="Heat map blended over the image, PNG, same size as the upload."
    )
    detail: Optional[str] = Field(default=None, description="Why no heat map was produced.")


class FrameAnswer(BaseModel):
    frame: int = Field(ge=0, description="0-based frame index (as `stream` and the error lines count).")
    time_s: float = Field(ge=0.0, description="Frame time stamp in seconds (DICOM FrameTime / CineRate, else 25 fps).")
    state: str = Field(description="plane, abstain or out_of_distribution, as the top-level `state`; read it before `plane`.")
    plane: Optional[str] = Field(description="As the top-level `plane`: null when out_of_distribution.")
    nearest_plane: Optional[str] = Field(default=None, description="As the top-level `nearest_plane`.")
    confidence: float = Field(ge=0.0, le=1.0)
    abstain: bool


class CineAnswer(BaseModel):
    """Every frame of a multi-frame upload (DICOM cine, multi-page TIFF), answered."""

    frames_declared: int = Field(description="NumberOfFrames (or the page count) the file declares.")
    frames_answered: int
    answered_frame: int = Field(description="The frame the top-level answer (plane, confidence, preview, heat map) "
                                            "is for: the most confident frame that got a plane, else the most "
                                            "confident abstention, else the most confident frame.")
    frames: list[FrameAnswer] = Field(description="Every answered frame, in order.")
    best_per_plane: list[FrameAnswer] = Field(description="The most confident frame of each plane among the frames "
                                                          "that got one (state `plane`: never an abstention or an "
                                                          "out-of-distribution frame, as `fetalplanes stream` "
                                                          "reports it), in frame order.")
    skipped: list[str] = Field(default_factory=list, description="One line per frame that could not be decoded.")
    note: Optional[str] = Field(default=None, description="Short read or frame cap, when the answer is partial.")

class OODInfo(BaseModel):
    gate: bool = Field(description="Whether the model file carries an out-of-distribution gate.")
    out_of_distribution: bool = Field(default=False, description="True: not a fetal plane (score above threshold).")
    score: Optional[float] = Field(default=None, description="The gate's score (higher = less like the training images).")
    threshold: Optional[float] = Field(default=None, description="Scores above it are out of distribution.")
    note: Optional[str] = Field(default=None, description="Set when the model has no OOD gate.")


class PredictResponse(BaseModel):
    filename: Optional[str] = Field(default=None, description="The upload's name, for display only.")
    state: Literal["plane", "abstain", "out_of_distribution"] = Field(
        description="out_of_distribution: not a fetal plane (OOD gate); abstain: low confidence; plane: `plane` stands.")
    ood: OODInfo
    plane: Optional[str] = Field(description="Top-1 class; the answer only when `state` is 'plane' (a suggestion "
                                             "to review when 'abstain'; null when 'out_of_distribution').")
    nearest_plane: Optional[str] = Field(default=None, description="Only when `state` is 'out_of_distribution': the "
                                                                   "top-1 class of a rejected input, not an answer.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated (temperature-scaled) probability of the "
                                                          "top-1 class (`plane`, or `nearest_plane`).")
    abstain: bool = Field(description="True when confidence is below the model's abstain threshold: review manually.")
    abstain_threshold: float = Field(ge=0.0, le=1.0)
    topk: list[ClassProbability]
    probabilities: dict[str, float]
    model: ModelRef
    image: ImageInfo
    explanation: Optional[Explanation] = Field(default=None, description="Present when ?explain=true.")
    preview_png_base64: Optional[str] = Field(
        default=None, description="The decoded image as PNG (when ?preview=true), e.g. to display DICOM."
    )
    cine: Optional[CineAnswer] = Field(
        default=None, description="Present for a multi-frame upload: every frame's answer and the best frame per "
                                  "plane; the top-level fields are then those of `cine.answered_frame`.")


class BatchItem(BaseModel):
    filename: Optional[str] = None
    status: int = Field(description="200 for a result, else the status a single upload would have got.")
    result: Optional[PredictResponse] = None
    error: Optional[str] = None


class BatchResponse(BaseModel):
    count: int
    failed: int
    items: list[BatchItem]


class PreprocessingInfo(BaseModel):
    image_size: int
    mean: list[float]
    std: list[float]
    channels: int
    resize: str


class ServiceLimits(BaseModel):
    max_upload_bytes: int = Field(description="Largest request body (all files of a batch together).")
    max_batch: int
    max_pixels: int
    accepted_formats: list[str]


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: Literal["checkpoint", "onnx"]
    task: str
    class_names: list[str]
    preprocessing: PreprocessingInfo
    temperature: float
    abstain_threshold: float
    ood_gate: dict[str, Any] = Field(default_factory=dict, description="The OOD gate (score, threshold, acceptance); empty: none.")
    explain_available: bool
    explain_detail: Optional[str] = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="From the model spec and metrics.json.")
    model_card: Optional[str] = Field(default=None, description="MODEL_CARD.md next to the model (Markdown).")
    limits: ServiceLimits


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str
    version: str
