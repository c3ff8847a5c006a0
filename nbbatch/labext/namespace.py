"""The URL prefix of the sidebar's routes: a module of its own, so the handlers and the
extension's entry point both read it without importing each other."""

#: The URL prefix of every route, under the server's base_url.
NAMESPACE = "nbbatch"
