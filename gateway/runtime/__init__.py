"""The serving process: uvicorn and the HTTP protocol it runs, the listeners, log set-up
and process tuning.

It serves the app ``gateway.app`` composes; nothing below it knows which server or process it
runs in.
"""
