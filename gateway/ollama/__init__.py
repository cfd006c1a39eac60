"""Ollama's vocabulary: model names, request bodies read as Ollama's Go decoder reads them,
the route table, token usage in streams, and the token estimate for a request.

Knowledge of the wire format only: it imports nothing of the gateway but the foundation (errors).
"""
