"""Request and response bodies of the OpenAI-compatible API (pydantic).

Requests are strict about types (a string is not an integer) and ignore fields they do not
know, as OpenAI's own API does. Fields whose non-default value paradec cannot honour (``n > 1``,
``logprobs``, penalties, ...) are rejected by the routes with a 400, never silently ignored.
Everything paradec-specific sits in the extension field ``paradec``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..params import MAX_STOP

Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # an int or a float; not "0.5", not true
OptionValue = Union[StrictBool, StrictInt, Annotated[StrictFloat, Field(allow_inf_nan=False)], StrictStr]  # typed per option by paradec.proposers


class ParadecOptions(BaseModel):
    """The ``paradec`` extension field of a request."""

    model_config = ConfigDict(extra="forbid")

    method: Optional[StrictStr] = Field(None, description="Decoding method (ar, pld, suffix, ...); default: the server's.")
    options: Optional[dict[str, OptionValue]] = Field(
        None, description="Method options, as in `paradec generate --opt key=value`; default: the server's."
    )
    session: Optional[Annotated[StrictStr, Field(min_length=1, max_length=256)]] = Field(
        None, description="Conversation id (default: the request's `user`): its drafter state may be kept between its requests."
    )


class JSONSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: StrictStr = Field(..., min_length=1, max_length=64)
    description: Optional[StrictStr] = None
    schema_: Union[dict[str, Any], StrictBool] = Field(..., alias="schema", description="The JSON Schema the output matches.")
    strict: Optional[StrictBool] = Field(None, description="Accepted; the schema is always enforced.")


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object``, ``json_schema`` (OpenAI's), or the
    extensions ``regex`` (field ``regex``) and ``grammar`` (field ``grammar``, llguidance syntax)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema", "regex", "grammar"]
    json_schema: Optional[JSONSchemaFormat] = None
    regex: Optional[StrictStr] = None
    grammar: Optional[StrictStr] = None

    def as_format(self) -> dict[str, Any]:
        """The library's form (``Engine.generate(response_format=...)``)."""
        if self.type == "json_schema":
            if self.json_schema is None:
                return {"type": "json_schema"}  # the library names what is missing
            return {"type": "json_schema", "json_schema": {"name": self.json_schema.name, "schema": self.json_schema.schema_}}
        out: dict[str, Any] = {"type": self.type}
        if self.type in ("regex", "grammar"):
            out[self.type] = getattr(self, self.type)
        return out


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: Optional[StrictInt] = Field(None, gt=0, description="At most this many new tokens.")
    temperature: Optional[Finite] = Field(None, ge=0, description="Default 1; 0 = greedy.")
    top_p: Optional[Finite] = Field(None, gt=0, le=1)
    top_k: Optional[StrictInt] = Field(None, ge=0, description="Extension (as in vLLM); 0 = off.")
    seed: Optional[StrictInt] = None
    stop: Optional[Union[StrictStr, Annotated[list[StrictStr], Field(max_length=MAX_STOP)]]] = None
    n: Optional[StrictInt] = Field(None, ge=1, description="Only 1 is supported.")
    stream: Optional[StrictBool] = False
    stream_options: Optional[dict[str, Any]] = None
    presence_penalty: Optional[Finite] = None
    frequency_penalty: Optional[Finite] = None
    logit_bias: Optional[dict[str, Any]] = None
    user: Optional[StrictStr] = None
    response_format: Optional[ResponseFormat] = None
    paradec: Optional[ParadecOptions] = None


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, Annotated[list[StrictStr], Field(min_length=1)], Annotated[list[StrictInt], Field(min_length=1)]]
    echo: Optional[StrictBool] = None
    logprobs: Optional[StrictInt] = None
    best_of: Optional[StrictInt] = None
    suffix: Optional[StrictStr] = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[StrictStr, Annotated[list[TextPart], Field(min_length=1)]]
    name: Optional[StrictStr] = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = None
    max_completion_tokens: Optional[StrictInt] = Field(None, gt=0, description="Alias of max_tokens.")
    tools: Optional[list[Any]] = None


# ---- responses --------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose keys and values came from a kept prefix


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class ParadecStats(BaseModel):
    """Decoding statistics of one request (the ``paradec`` field of every response)."""

    model_config = ConfigDict(extra="allow")

    method: str
    forwards: int
    mean_accepted: float
    drafted: int
    accepted: int
    acceptance_rate: float
    stop_reason: str
    queue_s: float


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None
    paradec: Optional[ParadecStats] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    paradec: ParadecStats


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "paradec"
    paradec: dict[str, Any] = {}


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
