"""A Falcon application."""

import falcon


class Things:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"falcon": "says hello", "query": req.get_param("q")}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = req.bounded_stream.read()
        resp.media = {"size": len(data)}


app = falcon.App()
app.add_route("/things", Things())
