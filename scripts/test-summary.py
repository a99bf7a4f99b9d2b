#!/usr/bin/env python3
"""Count individual test cases after `meson test` and print the closing line.

Each meson test writes XML into BUILDDIR/test-results: cmocka programs as
unit-<name>.xml (their group name is the test's name), pytest files as
system-<name>.xml. A meson test that failed without recording a failing case
(a crash, a timeout) counts as one failure; one that wrote no XML at all
counts as one case. Prints failures, then "N passed, N failed, N skipped".
Exit status 1 when anything failed.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET


def xml_counts(path):
    """(passed, failed, skipped, failure names) from a JUnit-style file."""
    tree = ET.parse(path)
    passed = failed = skipped = 0
    names = []
    for case in tree.iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
            failed += 1
            names.append(case.get('classname', '') + '::' + case.get('name', '?'))
        elif case.find('skipped') is not None:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, names


def main():
    builddir = sys.argv[1]
    results = os.path.join(builddir, 'test-results')
    log = os.path.join(builddir, 'meson-logs', 'testlog.json')
    passed = failed = skipped = 0
    failures = []
    if not os.path.exists(log):
        print('no meson test log found')
        print('0 passed, 1 failed')
        return 1
    with open(log, encoding='utf-8') as f:
        runs = [json.loads(line) for line in f if line.strip()]
    for run in runs:
        # meson names a test 'project:suite / name'
        suite_part, _, name = run['name'].rpartition(' / ')
        kind = 'unit' if suite_part.endswith(':unit') else \
            'system' if suite_part.endswith(':system') else 'other'
        xml = os.path.join(results, '%s-%s.xml' % (kind, name))
        ok = run['result'] in ('OK', 'EXPECTEDFAIL')
        skipped_run = run['result'] == 'SKIP'
        if os.path.exists(xml):
            try:
                p, fl, s, names = xml_counts(xml)
            except ET.ParseError as e:
                p, fl, s, names = 0, 0, 0, []
                print('unreadable results %s: %s' % (xml, e))
            passed += p
            skipped += s
            failed += fl
            failures += ['%s: %s' % (name, n) for n in names]
            if not ok and not skipped_run and fl == 0:
                failed += 1
                failures.append('%s: %s (exit %s)' % (name, run['result'], run.get('returncode')))
        elif skipped_run:
            skipped += 1
        elif ok:
            passed += 1
        else:
            failed += 1
            failures.append('%s: %s (exit %s)' % (name, run['result'], run.get('returncode')))
    if failures:
        print('failed:')
        for f in failures:
            print('  ' + f)
    line = '%d passed, %d failed' % (passed, failed)
    if skipped:
        line += ', %d skipped' % skipped
    print(line)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
