"""Helpers the tests import (tiny models and tokenizers, servers, lossless checks...); conftest.py holds only fixtures."""
