"""A Flask application."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "flask says hello"


@app.post("/upload")
def upload() -> object:
    data = request.get_data()
    return jsonify(size=len(data), form=request.form.to_dict())


@app.get("/user/<name>")
def user(name: str) -> object:
    return jsonify(name=name, script_root=request.script_root, url=request.url)
