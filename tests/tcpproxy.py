"""A TCP forwarder between pods and PostgreSQL that a test can cut: the database
server "unreachable" for a while, without touching the server others share."""

import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (host, port) until ``cut()``,
    which closes every connection and refuses new ones until ``restore()``; or
    until ``stall()``, after which it takes in every byte and delivers none (a stopped
    server, a hung link: connections stay open) until ``unstall()``."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.open = True
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.open = False
        with self.lock:
            for s in self.connections:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.connections.clear()

    def restore(self):
        self.open = True

    def stall(self):
        self.flowing.clear()

    def unstall(self):
        self.flowing.set()

    def close(self):
        self.unstall()
        self.cut()
        self.listener.close()
