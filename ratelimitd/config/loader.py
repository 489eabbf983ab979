"""Reads config files and directories into one validated `RateLimitConfig`."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from ratelimitd.config.environment import expand_environment
from ratelimitd.config.index import RateLimitConfig, build_domain
from ratelimitd.config.schema import DomainDocument, ErrorList, parse_document
from ratelimitd.errors import ConfigError

CONFIG_SUFFIXES = (".yaml", ".yml")


def config_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files named by `paths`: files as given, directories' `*.yaml`/`*.yml`.

    Hidden entries are skipped, which also skips the `..data` links of a Kubernetes
    ConfigMap volume while following the visible links into it.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(
                    child
                    for child in path.iterdir()
                    if child.suffix.lower() in CONFIG_SUFFIXES
                    and not child.name.startswith(".")
                    and not child.is_dir()
                )
            )
        else:
            files.append(path)
    return files


def load_config(paths: Iterable[str | Path]) -> RateLimitConfig:
    """Loads and validates every file; raises `ConfigError` listing every problem."""
    paths = list(paths)
    files = config_files(paths)
    if not files:
        raise ConfigError([f"{', '.join(map(str, paths))}: no config files found"])
    errors: list[str] = []
    sources: list[tuple[str, str]] = []
    for file in files:
        try:
            sources.append((str(file), file.read_text(encoding="utf-8")))
        except OSError as exc:
            errors.append(f"{file}: cannot read config file: {exc.strerror or exc}")
        except UnicodeDecodeError as exc:
            errors.append(
                f"{file}: cannot read config file: not UTF-8 text (at byte {exc.start}: {exc.reason})"
            )
    return config_from_texts(sources, errors)


def config_from_texts(
    sources: list[tuple[str, str]],
    errors: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RateLimitConfig:
    """Builds one config from `(file name, text)` pairs; raises `ConfigError`.

    `${VAR}` references are expanded from `environ` (the process's environment by
    default); the values read are part of the content hash.
    """
    errors = list(errors or [])
    environ = os.environ if environ is None else environ
    documents: list[tuple[str, DomainDocument]] = []
    digest = hashlib.sha256()
    for file, text in sources:
        digest.update(file.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
        file_errors, file_documents, used = parse_text(file, text, environ)
        for name, value in sorted(used.items()):
            digest.update(f"${name}={value}".encode("utf-8", "surrogatepass") + b"\0")
        errors.extend(file_errors)
        documents.extend((file, document) for document in file_documents)

    domains = {}
    origin: dict[str, str] = {}
    for file, document in documents:
        if document.domain in domains:
            errors.append(
                f"{file}: line {document.line}: duplicate domain '{document.domain}' "
                f"(already defined in {origin[document.domain]})"
            )
            continue
        domains[document.domain] = build_domain(document)
        origin[document.domain] = file
    if errors:
        raise ConfigError(errors)
    return RateLimitConfig(
        domains=domains,
        sources=tuple(file for file, _ in sources),
        content_hash=digest.hexdigest(),
        loaded_at=time.time(),
        texts=tuple(text for _, text in sources),
    )


ParsedText = tuple[list[str], list[DomainDocument], dict[str, str | None]]


def parse_text(file: str, text: str, environ: Mapping[str, str]) -> ParsedText:
    """Every error in one file's text, its valid domain documents, and the variables read."""
    errors = ErrorList(file)
    documents: list[DomainDocument] = []
    used: dict[str, str | None] = {}
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        return [f"{file}: error loading config file: {_one_line(exc)}"], [], used
    except RecursionError:
        return [f"{file}: error loading config file: nested too deeply"], [], used
    real = [node for node in nodes if node is not None and not _is_empty_document(node)]
    if not real:
        errors.items.append(f"{file}: config file cannot have empty domain")
    for node in real:
        before = len(errors.items)
        used.update(expand_environment(node, environ, errors))
        if len(errors.items) > before:
            continue  # the unexpanded text would only add confusing errors
        document = parse_document(node, errors)
        if document is not None:
            documents.append(document)
    return errors.items, documents if not errors.items else [], used


def _is_empty_document(node: yaml.Node) -> bool:
    """An explicit but empty document, as after a trailing `---`."""
    return (
        isinstance(node, yaml.ScalarNode)
        and node.tag == "tag:yaml.org,2002:null"
        and not node.value
    )


def _one_line(exc: yaml.YAMLError) -> str:
    """`line L, column C: problem (context)`, without PyYAML's source excerpt."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        detail = f" {exc.context}" if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{detail}"
    return " ".join(str(exc).split())
