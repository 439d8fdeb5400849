"""The stylize options are declared once, in ``StylizeOptions``: walking its fields, each
one is a query parameter, an OpenAPI parameter with the config's limits, a CLI flag, a
keyword of the handle API and a part of the cache key; a field added to the model alone
shows up in all of them, and none of the places that derive from the model lists the
options by hand."""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import Field, ValidationError

from serve_app import options as options_module
from serve_app.cli import flags
from serve_app.cli.main import build_parser
from serve_app.config import AppConfig
from serve_app.errors import InvalidParameters, ServiceError
from serve_app.http import params
from serve_app.http.app import create_app
from serve_app.http.errors import install_error_handlers
from serve_app.http.openapi import _constrain_options
from serve_app.ingress import Ingress
from serve_app.model.identity import ModelIdentity
from serve_app.options import Control, Option, StylizeOptions, option_fields, resolve_options
from serve_app.pipeline.keys import result_key
from serve_app.service.service import AnimeService
from tests.support.paths import REPO

CONFIG = AppConfig.model_validate(
    {
        "styles": [{"name": "a", "weights": "random"}, {"name": "b", "weights": "random"}],
        "limits": {"max_size": 1024, "max_sync_size": 512},
    }
)
IDENTITY = ModelIdentity("w", "r")
OPTION_ROUTES = {"/v1/stylize": True, "/v1/stylize/batch": True, "/v1/jobs": False}


def names() -> list[str]:
    return list(StylizeOptions.model_fields)


def another_value(option: Option, current: Any, synchronous: bool = False) -> Any:
    """A valid value of ``option`` other than ``current``, found from its declaration."""
    if option.value_type is bool:
        return not current
    choices = option.choices(CONFIG)
    candidates = choices or [option.maximum(CONFIG, synchronous), option.control.minimum]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            value = option.checked(option.parse(candidate), CONFIG, synchronous)
        except ServiceError:
            continue  # an exclusive minimum
        if value != current:
            return value
    raise AssertionError(f"no other valid value of {option.name} found from its declaration")


# --- one place each ---------------------------------------------------------------------


def test_the_query_dependency_takes_every_field():
    assert list(inspect.signature(params.stylize_query).parameters) == names()


def test_the_openapi_document_describes_every_field_with_the_configs_limits():
    document = create_app(SimpleNamespace(config=CONFIG, examples={})).openapi()
    for path, synchronous in OPTION_ROUTES.items():
        query = {
            p["name"]: p
            for p in document["paths"][path]["post"]["parameters"]
            if p["in"] == "query"
        }
        assert set(names()) <= set(query), path
        for option in option_fields():
            parameter = query[option.name]
            assert parameter["schema"] == option.json_schema(CONFIG, synchronous)
            assert parameter["description"] == option.description
            assert parameter.get("allowEmptyValue", False) == option.empty_means_default
    sizes = [
        {p["name"]: p for p in document["paths"][path]["post"]["parameters"]}["size"]["schema"]
        for path in OPTION_ROUTES
    ]
    assert [schema["maximum"] for schema in sizes] == [512, 512, 1024]


def test_every_field_is_a_cli_flag_with_its_bounds(capsys):
    parser = build_parser()
    files = ["stylize", "in.jpg", "-o", "out.png"]
    for option in option_fields():
        value = another_value(option, option.fixed_default)
        given = [flags.flag_of(option)]
        if option.value_type is not bool:
            given.append(str(value))
        args = parser.parse_args([*files, *given])
        assert set(flags.option_values(args)) == set(names())
        assert flags.option_values(args)[option.name] == value, option.name
    for given, refusal in (("--size=8", "size must be at least 16"), ("--quality=101", "1..100")):
        with pytest.raises(SystemExit):
            parser.parse_args([*files, given])
        assert refusal in capsys.readouterr().err


def test_every_field_is_a_keyword_of_the_handle_api():
    ingress, seen = handle_over(CONFIG)
    default = resolve_options(CONFIG)
    for option in option_fields():
        value = {option.name: another_value(option, getattr(default, option.name), True)}
        asyncio.run(ingress.stylize(b"picture", **value))
        asyncio.run(ingress.submit_job(b"video", **value))
        assert seen[-2:] == [
            resolve_options(CONFIG, value),
            resolve_options(CONFIG, value, synchronous=False),
        ]
    with pytest.raises(InvalidParameters, match="fmt"):
        asyncio.run(ingress.stylize(b"picture", fmt="png"))
    with pytest.raises(InvalidParameters, match="synchronous"):
        asyncio.run(ingress.stylize(b"picture", synchronous=False))


def test_changing_any_field_changes_the_cache_key():
    base = resolve_options(CONFIG)
    keys = {result_key("image", base, IDENTITY)}
    for option in option_fields():
        other = another_value(option, getattr(base, option.name))
        changed = StylizeOptions(**{**base.to_dict(), option.name: other})
        keys.add(result_key("image", changed, IDENTITY))
    assert len(keys) == 1 + len(names())


def test_a_still_picture_reads_every_option_but_the_motion_only_ones():
    base = resolve_options(CONFIG)
    moving = {option.name for option in option_fields() if option.control.motion_only}
    assert moving == {"container", "max_fps", "exact_frames"}
    for option in option_fields():
        changed = StylizeOptions(
            **{**base.to_dict(), option.name: another_value(option, getattr(base, option.name))}
        )
        same_still = changed.for_still() == base.for_still()
        assert same_still == (option.name in moving), option.name
    assert base.for_still() == base  # the defaults already read so


def test_a_job_record_keeps_the_options_as_a_stable_dict():
    options = resolve_options(CONFIG, format="webp", portrait="paste", background="b", max_fps=12)
    record = json.loads(json.dumps(options.to_dict()))
    assert list(record) == names()
    again = StylizeOptions.from_dict(record)
    assert again == options and hash(again) == hash(options)
    with pytest.raises(ValidationError):  # frozen: a resolved option cannot be changed
        options.size = 1  # type: ignore[misc]


def test_query_values_are_parsed_and_checked_with_the_options_errors():
    client = TestClient(query_app())
    empty = client.get("/q", params={"style": "", "format": "", "portrait": "", "container": ""})
    assert empty.status_code == 200, empty.text
    assert empty.json() == resolve_options(CONFIG).to_dict()
    for query, code in (
        ({"size": "big"}, "invalid_parameters"),
        ({"size": "0"}, "invalid_size"),
        ({"size": "600"}, "use_jobs"),
        ({"format": "bmp"}, "invalid_format"),
        ({"preserve_color": "maybe"}, "invalid_parameters"),
    ):
        answer = client.get("/q", params=query)
        assert (answer.status_code, answer.json()["error"]["code"]) == (422, code), query


# --- a field added to the model alone ---------------------------------------------------


class WithKnob(StylizeOptions):
    knob: Annotated[int, Control(InvalidParameters, minimum=0, maximum=9)] = Field(
        default=0, description="a control only this test declares"
    )


@pytest.fixture
def knob(monkeypatch):
    """``StylizeOptions`` with one more field, declared nowhere else."""
    monkeypatch.setattr(options_module, "StylizeOptions", WithKnob)
    option_fields.cache_clear()
    yield
    option_fields.cache_clear()


def test_a_field_added_to_the_model_shows_up_everywhere(knob):
    assert option_fields()[-1].name == "knob"
    # The query, with its type and bounds.
    client = TestClient(query_app())
    assert client.get("/q", params={"knob": "7"}).json()["knob"] == 7
    refused = client.get("/q", params={"knob": "10"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_parameters")
    # The OpenAPI parameter.
    operation = client.get("/openapi.json").json()["paths"]["/q"]["get"]
    _constrain_options(operation, CONFIG, synchronous=True)
    knob_parameter = {p["name"]: p for p in operation["parameters"]}["knob"]
    assert knob_parameter["schema"] == {"type": "integer", "minimum": 0, "maximum": 9}
    # The CLI flag.
    args = build_parser().parse_args(["stylize", "in.jpg", "-o", "o.png", "--knob", "3"])
    assert flags.option_values(args)["knob"] == 3
    # The handle API.
    ingress, seen = handle_over(CONFIG)
    asyncio.run(ingress.stylize(b"picture", knob=5))
    assert seen[-1].knob == 5
    # The cache key and a job record.
    base = resolve_options(CONFIG)
    assert result_key("i", base, IDENTITY) != result_key(
        "i", resolve_options(CONFIG, knob=1), IDENTITY
    )
    assert WithKnob.from_dict(base.to_dict()).knob == 0


# --- nothing lists them by hand ---------------------------------------------------------

# The places that turn the model into queries, schemas, flags, keywords and keys.
DERIVING_MODULES = [
    "serve_app/http/params.py",
    "serve_app/http/openapi.py",
    "serve_app/cli/flags.py",
    "serve_app/pipeline/keys.py",
    "serve_app/ingress.py",
]


def option_listings(source: str) -> list[tuple[int, list[str]]]:
    """Where two or more option names appear together: a dict, list, tuple or set of
    names, a function's parameters, a call's keywords, a class's fields."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            group = [key.value for key in node.keys if isinstance(key, ast.Constant)]
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            group = [element.value for element in node.elts if isinstance(element, ast.Constant)]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            arguments = node.args
            group = [
                a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)
            ]
        elif isinstance(node, ast.Call):
            group = [keyword.arg for keyword in node.keywords]
        elif isinstance(node, ast.ClassDef):
            group = [
                statement.target.id
                for statement in node.body
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
            ]
        else:
            continue
        named = sorted(set(names()).intersection(item for item in group if isinstance(item, str)))
        if len(named) >= 2:
            found.append((node.lineno, named))
    return found


@pytest.mark.parametrize("module", DERIVING_MODULES)
def test_no_deriving_module_lists_the_options(module):
    assert option_listings((REPO / module).read_text()) == []


def test_the_service_resolves_options_without_listing_them():
    source = textwrap.dedent(inspect.getsource(AnimeService.options))
    assert option_listings(source) == []


def test_the_listing_check_would_see_a_hand_written_list():
    """The check above is not vacuous: the model's own declaration is such a listing."""
    assert option_listings(Path(options_module.__file__).read_text())


# --- helpers ------------------------------------------------------------------------------


def query_app() -> FastAPI:
    """A route over the generated dependency, answering the options as resolved."""
    app = FastAPI()
    install_error_handlers(app)
    query = params.make_stylize_query()

    def resolved(sent: dict) -> dict:
        return resolve_options(CONFIG, sent).to_dict()

    # The dependency is made here, so it goes in as a default (a local is out of reach of
    # the annotations FastAPI reads).
    resolved.__signature__ = inspect.Signature(
        [inspect.Parameter("sent", inspect.Parameter.KEYWORD_ONLY, default=Depends(query))]
    )
    app.get("/q")(resolved)

    return app


class _Service:
    """What the handle API calls: the service's own ``options``, and a record of what
    it would stylize."""

    options = AnimeService.options

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.seen: list[StylizeOptions] = []
        self.jobs = SimpleNamespace(view=lambda record: record)

    async def stylize(self, data: bytes, options: StylizeOptions) -> StylizeOptions:
        self.seen.append(options)
        return options

    async def submit_job(self, data: bytes, options: StylizeOptions, **_: Any):
        self.seen.append(options)
        return options, True


def handle_over(config: AppConfig) -> tuple[Any, list[StylizeOptions]]:
    """The deployment's handle methods (no Ray started) over a recording service."""
    service = _Service(config)
    replica = SimpleNamespace(_service=service)
    deployment = Ingress.func_or_class
    handle = SimpleNamespace(
        stylize=functools.partial(deployment.stylize, replica),
        submit_job=functools.partial(deployment.submit_job, replica),
    )
    return handle, service.seen
