# Types of what polydub's python models use from Triton's ``triton_python_backend_utils``, which
# exists only inside Triton's python backend stub (the classes are its C++ bindings). The models
# import it for type checking only:
#
#     if TYPE_CHECKING:
#         from polydub.serving import triton_utils as pb_utils
#     else:
#         import triton_python_backend_utils as pb_utils

from collections.abc import Sequence
from typing import Any, ClassVar

from numpy.typing import NDArray

class TritonModelException(Exception): ...

class TritonError:
    UNKNOWN: ClassVar[int]
    INTERNAL: ClassVar[int]
    NOT_FOUND: ClassVar[int]
    INVALID_ARG: ClassVar[int]
    UNAVAILABLE: ClassVar[int]
    UNSUPPORTED: ClassVar[int]
    ALREADY_EXISTS: ClassVar[int]
    CANCELLED: ClassVar[int]
    def __init__(self, message: str, code: int = ...) -> None: ...
    def message(self) -> str: ...
    def code(self) -> int: ...

class Tensor:
    def __init__(self, name: str, array: NDArray[Any]) -> None: ...
    def name(self) -> str: ...
    def as_numpy(self) -> NDArray[Any]: ...

class InferenceResponse:
    def __init__(
        self, output_tensors: Sequence[Tensor] = ..., error: TritonError | None = None
    ) -> None: ...
    def has_error(self) -> bool: ...
    def error(self) -> TritonError: ...
    def output_tensors(self) -> list[Tensor]: ...

class InferenceRequest:
    def __init__(
        self,
        *,
        model_name: str,
        inputs: Sequence[Tensor],
        requested_output_names: Sequence[str],
        model_version: int = -1,
    ) -> None: ...
    def inputs(self) -> list[Tensor]: ...
    def exec(self) -> InferenceResponse: ...

class Logger:
    @staticmethod
    def log_info(message: str) -> None: ...
    @staticmethod
    def log_warn(message: str) -> None: ...
    @staticmethod
    def log_error(message: str) -> None: ...

def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None: ...
def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None: ...
