"""The token ledger: usage per key, model and day counted from the terminal records, its
SQLite store, and the report the CLI and the admin API share.

It consumes what the routes record; it never refuses or delays a request, and knows no route.
"""
