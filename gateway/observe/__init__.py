"""Watching requests: the terminal record of one request, the access log, the metrics and
the start-up report.

Observers consume records; they never decide a request's fate, and know nothing of the ledger or
the routes.
"""
