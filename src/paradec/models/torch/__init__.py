"""The torch backend: transformers models, the lean decoder, packed and int8 linears."""
