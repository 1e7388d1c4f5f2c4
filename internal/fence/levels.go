package fence

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// LevelResult is the outcome of one fence level.
type LevelResult struct {
	Level   int      `json:"level"`
	Devices []string `json:"devices"`
	Results []Result `json:"results"`
	// Err is why the level failed (nil: the node is fenced).
	Err error `json:"-"`
}

// Error returns the failure text ("" on success).
func (l LevelResult) Error() string {
	if l.Err == nil {
		return ""
	}
	return l.Err.Error()
}

// FenceLevels tries node's levels in order until one succeeds: every device
// of a level must succeed (for reboot with several devices, all are switched
// off before any is switched on again, as with redundant power supplies).
// It returns the level that succeeded (1-based) and each level's outcome;
// onLevel, when set, is called after each level.
func (r *Runner) FenceLevels(ctx context.Context, node, action string, levels [][]string, devices map[string]Device, onLevel func(LevelResult)) (int, []LevelResult, error) {
	if len(levels) == 0 {
		return 0, nil, fmt.Errorf("node %s has no fence levels", node)
	}
	var out []LevelResult
	var why []string
	for i, devs := range levels {
		lr := r.runLevel(ctx, i+1, node, action, devs, devices)
		out = append(out, lr)
		if onLevel != nil {
			onLevel(lr)
		}
		if lr.Err == nil {
			return i + 1, out, nil
		}
		why = append(why, fmt.Sprintf("level %d: %v", i+1, lr.Err))
		if ctx.Err() != nil {
			break
		}
	}
	return 0, out, fmt.Errorf("every fence level of node %s failed: %s", node, strings.Join(why, "; "))
}

func (r *Runner) runLevel(ctx context.Context, level int, node, action string, names []string, devices map[string]Device) LevelResult {
	lr := LevelResult{Level: level, Devices: names}
	if len(names) == 0 {
		lr.Err = errors.New("the level has no devices")
		return lr
	}
	var devs []Device
	for _, n := range names {
		d, ok := devices[n]
		if !ok {
			lr.Err = fmt.Errorf("device %s is not configured", n)
			return lr
		}
		if !d.Covers(node) {
			lr.Err = fmt.Errorf("device %s does not cover node %s", n, node)
			return lr
		}
		devs = append(devs, d)
	}
	run := func(d Device, act string) bool {
		res := r.Run(ctx, d, act, node)
		lr.Results = append(lr.Results, res)
		if res.Err != nil {
			lr.Err = fmt.Errorf("device %s: %w", d.Name, res.Err)
			return false
		}
		return true
	}
	if action != ActionReboot {
		for _, d := range devs {
			if !run(d, action) {
				return lr
			}
		}
		return lr
	}
	if len(devs) == 1 {
		m, err := r.Metadata(ctx, devs[0].Agent)
		if err == nil && (len(m.Actions) == 0 || m.HasAction(ActionReboot)) {
			run(devs[0], ActionReboot)
			return lr
		}
	}
	for _, d := range devs {
		if !run(d, ActionOff) {
			return lr
		}
	}
	// The node is off once every device is: a failure to power it on
	// again does not undo the fencing.
	for _, d := range devs {
		res := r.Run(ctx, d, ActionOn, node)
		lr.Results = append(lr.Results, res)
	}
	return lr
}
