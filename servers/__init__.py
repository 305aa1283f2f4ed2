"""The servers that ship with forkthread, by command-line name.

Each entry maps a name to ``module:Class``; third-party packages add their
own through the ``forkthread.servers`` entry-point group.
"""

#: name -> "module:Class"; the order is the order of ``forkthread list``.
SERVERS: dict[str, str] = {
    "daytime": "servers.daytime:DaytimeServer",
    "echo": "servers.echo:EchoServer",
    "chat": "servers.chat:ChatServer",
    "message": "servers.message:MessageServer",
    "http": "servers.http.server:HttpServer",
    "wsgi": "servers.wsgi.server:WsgiServer",
    "nbytes": "servers.nbytes:NBytesServer",
    "work": "servers.work:WorkServer",
}
