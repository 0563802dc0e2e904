"""The README is a front door of at most 300 lines, and every relative link in it and in docs/*.md leads somewhere:
to a file that exists and, for `#anchor` links, to a heading of that page (GitHub's heading slugs)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

FENCE = re.compile(r'^\s*(```|~~~)')
INLINE_CODE = re.compile(r'`[^`\n]*`')
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def _pages() -> list[Path]:
    return [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md')), REPO / 'dynadepth_ros' / 'models' / 'README.md']


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, without punctuation but `-` and `_`,
    spaces as `-`."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)      # a link renders as its text
    text = text.replace('`', '').replace('*', '')
    text = re.sub(r'[^\w\- ]', '', text.lower())
    return text.replace(' ', '-')


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f'{base}-{k}')
    return out


def broken_links(page: Path) -> list[str]:
    """'page:line: target (why)' for every relative link of `page` that leads nowhere."""
    text = page.read_text(encoding='utf-8')
    problems = []
    for n, line in _prose_lines(text):
        for target in LINK.findall(INLINE_CODE.sub('', line)):
            if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):      # http:, https:, mailto: ...
                continue
            path, _, anchor = target.partition('#')
            dest = (page.parent / path).resolve() if path else page
            where = f'{page.relative_to(REPO) if page.is_relative_to(REPO) else page}:{n}: {target}'
            if not dest.exists():
                problems.append(f'{where} (no such file)')
            elif anchor and dest.suffix == '.md' and anchor not in anchors(dest.read_text(encoding='utf-8')):
                problems.append(f'{where} (no heading #{anchor} in {dest.name})')
    return problems


def test_readme_is_a_front_door_of_at_most_300_lines():
    lines = (REPO / 'README.md').read_text(encoding='utf-8').count('\n')
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines; move the depth into docs/ (at most {README_MAX_LINES})'


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = _pages()
    assert len(pages) > 3 and all(p.exists() for p in pages), pages
    problems = [p for page in pages for p in broken_links(page)]
    assert not problems, 'broken links:\n' + '\n'.join(problems)


def test_the_readme_links_every_docs_page():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    linked = {(REPO / t.partition('#')[0]).resolve() for _, line in _prose_lines(readme)
              for t in LINK.findall(INLINE_CODE.sub('', line)) if t.startswith('docs/')}
    unlinked = [p.name for p in sorted((REPO / 'docs').glob('*.md')) if p.resolve() not in linked]
    assert not unlinked, f'docs pages the README does not link: {unlinked}'


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / 'other.md').write_text("# Other page\n\n## Moving objects at the scene's scale\n")
    page = tmp_path / 'page.md'
    page.write_text('# Page\n\n[ok](other.md#moving-objects-at-the-scenes-scale) [self](#page)\n'
                    '[gone](missing.md) [bad anchor](other.md#no-such-heading) [web](https://example.com/x)\n'
                    '`[in code](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n')
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert 'missing.md (no such file)' in problems[0] and '#no-such-heading' in problems[1]


def test_slugs_follow_githubs_rules():
    assert slug('Sim time: `/clock`') == 'sim-time-clock'
    assert slug('Humble and Jazzy: FASTRTPS_DEFAULT_PROFILES_FILE') == 'humble-and-jazzy-fastrtps_default_profiles_file'
    assert slug('Stages 2–3 measured') == 'stages-23-measured'
    assert slug('A. Stand-alone virtual environment (what `make` does)') == 'a-stand-alone-virtual-environment-what-make-does'
    assert anchors('# A\n## A\n## A\n') == {'a', 'a-1', 'a-2'}
