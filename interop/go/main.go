// A client on the tutorial's own stack (grpc-go, from Debian's packages), against the project's
// proto: streams N one-item orders with addOrders on a fresh connection, as the tutorial's client
// streams its updates, then checks that the connection still answers getOrder.
//
// Usage: tiny-orders ADDRESS N. Prints the answer, or "error CODE: MESSAGE" and exits 1.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	wrapper "google.golang.org/protobuf/types/known/wrapperspb"
	pb "order_management"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tiny-orders ADDRESS N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "N must be a number")
		os.Exit(2)
	}
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Printf("error connect: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	client := pb.NewOrderManagementClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := client.AddOrders(ctx)
	if err != nil {
		fmt.Printf("error open: %v\n", err)
		os.Exit(1)
	}
	for i := 0; i < n; i++ {
		if err := stream.Send(&pb.Order{Items: []string{"x"}, Destination: "Go"}); err != nil {
			break // the server answered early; CloseAndRecv says why
		}
	}
	reply, err := stream.CloseAndRecv()
	failed := err != nil
	if failed {
		s, _ := status.FromError(err)
		fmt.Printf("error %s: %s\n", s.Code(), s.Message())
	} else {
		fmt.Println(reply.GetValue())
	}
	// The connection survived either way.
	if _, err := client.GetOrder(ctx, &wrapper.StringValue{Value: "106"}); err != nil {
		fmt.Printf("error after: %v\n", err)
		os.Exit(1)
	}
	if failed {
		os.Exit(1)
	}
}
