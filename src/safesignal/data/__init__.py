"""Data: the JSONL record schema, its validation, and training datasets."""

from .schema import DataError, Record, parse_record, read_jsonl

__all__ = ["DataError", "Record", "parse_record", "read_jsonl"]
