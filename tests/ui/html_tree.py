"""A tiny HTML tree (stdlib ``html.parser``) for reading figures off the dashboard's pages in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(" ".join((c if isinstance(c, str) else c.text).split()) for c in self.children if c).strip()

    def iter(self) -> list[Node]:
        out: list[Node] = [self]
        for child in self.children:
            if isinstance(child, Node):
                out.extend(child.iter())
        return out

    def find_all(self, **attrs: str) -> list[Node]:
        return [n for n in self.iter() if all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, **attrs: str) -> Node:
        found = self.find_all(**attrs)
        assert found, f"no element with {attrs}"
        return found[0]

    def figure(self, name: str) -> str:
        """The text of the element marked ``data-figure=name`` (a card: its big number)."""
        node = self.find(data_figure=name)
        big = [n for n in node.iter() if n.attrs.get("class") == "big"]
        return (big[0] if big else node).text


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    return builder.root
